// The vendored portal libraries (web/static/vendor, written by scripts/vendor.sh):
// they match the pinned npm packages, and each works in Chromium under the CSP
// the portal will send, without a request leaving loopback.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { test, serveStatic, repoRoot, DOCS_CSP } from './lib/harness.mjs';

const run = promisify(execFile);
const staticDir = path.join(repoRoot, 'web', 'static');

async function serve(t, files, headers) {
  for (const [name, body] of Object.entries(files)) await fs.writeFile(path.join(t.tmpdir, name), body);
  const srv = await serveStatic(t.tmpdir, { mounts: { '/static/': staticDir }, ...(headers ? { headers } : {}) });
  t.defer(srv.close);
  return srv;
}

test('vendor: web/static/vendor matches tools/node_modules', async () => {
  try {
    await run('bash', [path.join(repoRoot, 'scripts', 'vendor.sh'), '--check']);
  } catch (e) {
    throw new Error('scripts/vendor.sh --check: ' + (e.stderr || e.message));
  }
});

test('vendor: uPlot draws a chart under the portal CSP', async (t) => {
  const srv = await serve(t, {
    'chart.html': `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Calls per hour</title>
<link rel="stylesheet" href="/static/vendor/uplot/uPlot.min.css">
<script src="/static/vendor/uplot/uPlot.iife.min.js" defer></script>
<script src="/chart.js" defer></script></head>
<body><main><h1>Calls per hour</h1><div id="chart"></div></main></body></html>
`,
    'chart.js': `'use strict';
const t0 = 1767225600, xs = [], calls = [], errors = [];
for (let i = 0; i < 24; i++) { xs.push(t0 + i * 3600); calls.push(100 + 80 * Math.sin(i / 4)); errors.push(i % 7); }
window.chart = new uPlot({
  title: 'Calls per hour', width: 800, height: 300,
  series: [{}, { label: 'calls', stroke: '#0a58ca' }, { label: 'errors', stroke: '#b02a37' }],
}, [xs, calls, errors], document.getElementById('chart'));
`,
  });
  const page = await t.newPage();
  await page.goto(srv.url + '/chart.html');
  await page.waitForFunction(() => window.chart && document.querySelector('#chart canvas'));
  const box = await page.locator('#chart canvas').boundingBox();
  assert.ok(box && box.width >= 700 && box.height >= 200, 'canvas size ' + JSON.stringify(box));
  assert.match(await page.locator('#chart .u-legend').innerText(), /calls[\s\S]*errors/);
  // Draws something other than the background.
  const inked = await page.evaluate(() => {
    const c = document.querySelector('#chart canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) n++;
    return n;
  });
  assert.ok(inked > 1000, `only ${inked} pixels drawn`);
  await t.screenshot(page, 'vendor-uplot');
});

test('vendor: RapiDoc renders the admin API offline under the docs CSP', async (t) => {
  const spec = await fs.readFile(path.join(repoRoot, 'admin-api', 'openapi.json'));
  const srv = await serve(t, {
    'docs.html': `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>API reference</title>
<script type="module" src="/static/vendor/rapidoc/rapidoc-min.js"></script></head>
<body><rapi-doc spec-url="/openapi.json" load-fonts="false" render-style="read" show-header="false"
  allow-spec-url-load="false" allow-spec-file-load="false" allow-try="false"></rapi-doc></body></html>
`,
    'openapi.json': spec,
  }, { 'Content-Security-Policy': DOCS_CSP, 'X-Content-Type-Options': 'nosniff' });
  const page = await t.newPage();
  await page.goto(srv.url + '/docs.html');
  // Polls a cheap selector (the shadow tree of a 280 KB document is large).
  await page.waitForFunction(() => document.querySelector('rapi-doc')?.shadowRoot?.querySelector('[id^="post-"]'),
    null, { timeout: 20_000, polling: 100 });
  const title = JSON.parse(spec).info.title;
  assert.ok(await page.evaluate((want) => document.querySelector('rapi-doc').shadowRoot.textContent.includes(want), title),
    `"${title}" not shown`);
  // Its styles applied: the shadow root's <style> (allowed by hash) sets the layout.
  const layout = await page.evaluate(() => getComputedStyle(document.querySelector('rapi-doc')
    .shadowRoot.querySelector('.body')).display);
  assert.equal(layout, 'flex', 'RapiDoc\'s stylesheet was not applied (CSP hash out of date?)');
  await t.screenshot(page, 'vendor-rapidoc');
});
