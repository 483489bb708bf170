// Smoke tests of the harness itself, on tiny pages written into a temp dir
// and served with the portal's CSP: Chromium starts, scripts run, clicks work,
// axe-core passes a good page and catches a bad one, and what the harness
// must catch (CSP violations, console and page errors) is caught.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { test, serveStatic, formatViolations } from './lib/harness.mjs';

const GOOD = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Tollgate smoke</title>
<link rel="stylesheet" href="/app.css">
<script src="/app.js" defer></script>
</head>
<body>
<header><h1>Smoke test</h1></header>
<main>
<p id="out" aria-live="polite">not clicked</p>
<button id="go" type="button">Count</button>
<form action="/" method="get">
<label for="email">Email</label>
<input id="email" name="email" type="email" autocomplete="email">
<button type="submit">Send</button>
</form>
</main>
</body>
</html>
`;
const CSS = 'body { font-family: sans-serif; color: #111; background: #fff; margin: 2rem; }\n' +
  'button { color: #fff; background: #0a58ca; border: 0; padding: .5rem 1rem; }\n';
const JS = `'use strict';
let n = 0;
document.getElementById('go').addEventListener('click', () => {
  n += 1;
  document.getElementById('out').textContent = 'clicked ' + n;
});
`;
// Otherwise fine, but the input has no label.
const BAD = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Unlabelled</title></head>
<body><main><h1>Search</h1><form action="/" method="get"><input type="text" name="q"></form></main></body>
</html>
`;
// Breaks the CSP twice, logs an error and throws.
const NAUGHTY = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Naughty</title>
<script>document.title = 'inline script ran';</script>
<script src="/naughty.js"></script>
</head>
<body><main><h1 style="color: red">Naughty</h1></main></body>
</html>
`;
const NAUGHTY_JS = "console.error('logged by naughty.js');\nthrow new Error('thrown by naughty.js');\n";

async function site(t) {
  const files = { 'index.html': GOOD, 'app.css': CSS, 'app.js': JS, 'bad.html': BAD,
    'naughty.html': NAUGHTY, 'naughty.js': NAUGHTY_JS };
  for (const [name, body] of Object.entries(files)) await fs.writeFile(path.join(t.tmpdir, name), body);
  const srv = await serveStatic(t.tmpdir);
  t.defer(srv.close);
  return srv;
}

test('smoke: title, click handler, screenshot', async (t) => {
  const srv = await site(t);
  const page = await t.newPage();
  const res = await page.goto(srv.url + '/');
  assert.equal(res.status(), 200);
  assert.equal(await page.title(), 'Tollgate smoke');
  assert.equal(await page.textContent('#out'), 'not clicked');
  await page.getByRole('button', { name: 'Count' }).click();
  await page.getByRole('button', { name: 'Count' }).click();
  assert.equal(await page.textContent('#out'), 'clicked 2');
  const shot = await t.screenshot(page, 'smoke-index');
  const { size } = await fs.stat(shot);
  assert.ok(size > 1000, `screenshot ${shot} is only ${size} bytes`);
});

test('smoke: axe-core finds no violation on an accessible page', async (t) => {
  const srv = await site(t);
  const page = await t.newPage();
  await page.goto(srv.url + '/');
  const v = await t.a11y(page);
  assert.equal(v.length, 0, formatViolations(v));
});

test('smoke: axe-core catches an input without a label', async (t) => {
  const srv = await site(t);
  const page = await t.newPage();
  await page.goto(srv.url + '/bad.html');
  const v = await t.a11y(page);
  const label = v.find((x) => x.id === 'label');
  assert.ok(label, 'expected the "label" rule to fail, got:\n' + formatViolations(v));
  assert.equal(label.targets.length, 1, formatViolations(v));
  assert.equal(await page.locator(label.targets[0]).getAttribute('name'), 'q');
  await assert.rejects(t.assertAccessible(page), /label/);
});

test('smoke: CSP violations, console errors and page errors are caught', async (t) => {
  const srv = await site(t);
  const page = await t.newPage();
  await page.goto(srv.url + '/naughty.html');
  await page.waitForLoadState('load');
  assert.equal(await page.title(), 'Naughty', 'the inline script must not have run');
  const errors = t.errors(page).join('\n');
  for (const want of [/CSP violation: script-src-elem blocked inline/, /CSP violation: style-src-attr blocked inline/,
    /console error: logged by naughty\.js/, /page error: Error: thrown by naughty\.js/]) {
    assert.match(errors, want);
  }
  t.clearErrors(page); // asserted: the runner must not fail the test for them
});
