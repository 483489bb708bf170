#!/usr/bin/env node
// Browser test runner: imports every tests/browser/*.test.mjs (in name order),
// runs their tests one after another against one headless Chromium, prints
// "name: ok" or "name: FAIL" plus the reason for each, then "N passed, N failed".
// Exit 1 if anything failed.
//
//   node tests/browser/run.mjs [--artifacts DIR] [--only SUBSTRING] [KEY=VALUE ...]
//
// --artifacts: where screenshots go (default tests/browser/artifacts, which is
// gitignored; meson passes <builddir>/tests/browser-artifacts).
// KEY=VALUE pairs reach the tests as t.options (e.g. server=/path/to/tollgate-server).
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as h from './lib/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const options = {};
let artifacts = path.join(here, 'artifacts');
let only = null;
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--artifacts') artifacts = path.resolve(argv[++i]);
  else if (a === '--only') only = argv[++i];
  else if (/^[A-Za-z_][\w-]*=/.test(a)) { const k = a.slice(0, a.indexOf('=')); options[k] = a.slice(k.length + 1); }
  else { console.error('usage: run.mjs [--artifacts DIR] [--only SUBSTRING] [KEY=VALUE ...]'); process.exit(2); }
}

for (const f of fs.readdirSync(here).filter((f) => f.endsWith('.test.mjs')).sort()) {
  await import(pathToFileURL(path.join(here, f)).href);
}
const tests = h.registeredTests().filter((t) => !only || t.name.includes(only));

let passed = 0, failed = 0;
const report = (name, err) => {
  if (!err) { passed++; console.log(`${name}: ok`); return; }
  failed++;
  const msg = String(err && err.stack ? err.stack : err).replace(/\n/g, '\n  ');
  console.log(`${name}: FAIL\n  ${msg}`);
};

const started = Date.now();
let browser = null;
try {
  browser = await h.launchBrowser();
  console.log(`# ${browser.version()} via playwright-core, artifacts in ${artifacts}`);
} catch (e) {
  for (const t of tests) report(t.name, 'browser did not start: ' + e.message);
}

for (const tc of browser ? tests : []) {
  const pages = [];
  const deferred = [];
  const tmpdir = await h.makeTmpdir();
  const t = {
    browser, artifacts, options, tmpdir,
    newPage: async (opts) => { const p = await h.newPage(browser, opts); pages.push(p); return p; },
    errors: h.pageErrors,
    clearErrors: h.clearPageErrors,
    a11y: h.axeCheck,
    assertAccessible: h.assertAccessible,
    screenshot: (page, name) => h.screenshot(page, artifacts, name),
    defer: (fn) => deferred.push(fn),
  };
  let err = null;
  let timer;
  try {
    await Promise.race([
      tc.fn(t),
      new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${tc.timeout} ms`)), tc.timeout); }),
    ]);
    // Whatever the test did not assert on its own: console errors, page
    // errors, CSP violations, requests that left loopback.
    const left = pages.filter((p) => !h.pageAllowsErrors(p)).flatMap((p) => h.pageErrors(p));
    if (left.length) err = new Error('the page reported:\n' + left.join('\n'));
  } catch (e) {
    err = e;
  } finally {
    clearTimeout(timer);
  }
  for (const p of pages) await h.pageContext(p)?.close().catch(() => {});
  for (const fn of deferred.reverse()) {
    try { await fn(); } catch (e) { err ??= e; }
  }
  await fsp.rm(tmpdir, { recursive: true, force: true });
  report(tc.name, err);
}

await h.closeBrowser(browser);
console.log(`# ${((Date.now() - started) / 1000).toFixed(1)} s`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed || (!tests.length && !only) ? 1 : 0);
