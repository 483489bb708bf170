// Browser-test helpers: Debian's Chromium driven by playwright-core from
// tools/node_modules (installed by scripts/deps.sh; never downloads a browser).
//
// A test file (tests/browser/*.test.mjs) registers tests with test(name, fn);
// run.mjs runs them in order and prints "name: ok|FAIL" and "N passed, N failed".
// fn receives a context `t`:
//   t.browser            the shared Browser (launched once per run)
//   t.newPage(opts)      a page in a fresh context that records console errors,
//                        page errors, CSP violations and off-loopback requests;
//                        the runner fails the test if any were recorded
//                        (unless opts.allowErrors, or t.clearErrors(page))
//   t.errors(page)       what was recorded so far, as strings
//   t.clearErrors(page)  forget what was recorded (after asserting it)
//   t.a11y(page, opts)   axe-core violations on the page (array)
//   t.assertAccessible(page, opts)  throws listing each violation
//   t.screenshot(page, name)        full-page PNG into the artifacts dir
//   t.tmpdir             a fresh temporary directory, removed after the test
//   t.artifacts          the artifacts directory
//   t.options            KEY=VALUE arguments given to run.mjs (binary paths...)
//   t.defer(fn)          run fn (async ok) after the test, last-in first-out
// Also exported: serveStatic(dir, {headers}) and freePort() for tests that
// need a server, PORTAL_CSP (the portal's Content-Security-Policy), DOCS_CSP
// (the API reference page's, for RapiDoc), and
// repoRoot / toolsRequire for resolving npm packages from tools/.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const toolsRequire = createRequire(path.join(repoRoot, 'tools', 'package.json'));

export const CHROMIUM = process.env.TOLLGATE_CHROMIUM || '/usr/bin/chromium';
// --disable-background-networking: this machine's network is closed, and
// without it Chromium tries (and fails) to reach Google's hosts at start.
export const CHROMIUM_ARGS = ['--no-sandbox', '--disable-background-networking', '--headless',
  '--disable-gpu', '--disable-quic', '--disable-component-update', '--disable-sync',
  '--no-first-run', '--disable-features=Translate,MediaRouter,OptimizationHints'];

// The Content-Security-Policy the portal sends (issue 7). A page that needs
// more (a style nonce) must say so in web/README.md first.
export const PORTAL_CSP = "default-src 'self'; script-src 'self'; style-src 'self'; " +
  "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
// The API reference page (RapiDoc 9.3.8, light theme, load-fonts="false")
// needs two relaxations, both for styles only (web/README.md says why):
// the hash of the <style> element RapiDoc renders in its shadow root, and
// style attributes. The hash changes with RapiDoc's version and its theme
// attributes; the 'vendor: rapidoc' test fails and Chromium prints the new one.
export const RAPIDOC_STYLE_HASH = 'sha256-NolJvpLT1T5e8QBkz4jdiH1sL721JFKC74rleMr1A7w=';
export const DOCS_CSP = "default-src 'self'; script-src 'self'; " +
  `style-src 'self' '${RAPIDOC_STYLE_HASH}'; style-src-attr 'unsafe-inline'; ` +
  "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

const registry = [];
export function test(name, fn, opts = {}) {
  registry.push({ name, fn, timeout: opts.timeout ?? 60_000 });
}
export function registeredTests() { return registry; }

let playwright = null;
function loadPlaywright() {
  if (!playwright) {
    try {
      playwright = toolsRequire('playwright-core');
    } catch (e) {
      throw new Error('playwright-core is not installed in tools/node_modules: run scripts/deps.sh (' + e.message + ')');
    }
  }
  return playwright;
}

export async function launchBrowser() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(CHROMIUM + ' not found: run scripts/deps.sh (Debian package chromium)');
  }
  const { chromium } = loadPlaywright();
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, timeout: 60_000 });
}

export async function closeBrowser(browser) {
  if (browser) await browser.close().catch(() => {});
}

const isLoopback = (host) => host === 'localhost' || host === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(host);

// A page in its own browser context, recording everything that should never
// happen on a portal page. Requests that leave loopback are aborted and recorded.
export async function newPage(browser, opts = {}) {
  const context = await browser.newContext({
    viewport: opts.viewport ?? { width: 1280, height: 800 },
    baseURL: opts.baseURL,
    javaScriptEnabled: opts.javaScriptEnabled ?? true,
    serviceWorkers: 'block',
  });
  context.setDefaultTimeout(opts.timeout ?? 10_000);
  const errors = [];
  await context.route('**/*', (route) => {
    const u = new URL(route.request().url());
    if ((u.protocol === 'http:' || u.protocol === 'https:' || u.protocol === 'ws:' || u.protocol === 'wss:') &&
        !isLoopback(u.hostname)) {
      errors.push('off-loopback request: ' + route.request().method() + ' ' + u.href);
      return route.abort('blockedbyclient');
    }
    return route.continue();
  });
  // Runs before any page script, outside the page's CSP.
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      console.error('CSP violation: ' + e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline') +
        ' at ' + (e.sourceFile || '') + ':' + e.lineNumber + ' sample=' + JSON.stringify(e.sample || ''));
    });
  });
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error') {
      const loc = m.location();
      errors.push('console error: ' + m.text() + (loc && loc.url ? ' (' + loc.url + ':' + loc.lineNumber + ')' : ''));
    }
  });
  page.on('pageerror', (e) => errors.push('page error: ' + (e.stack || e.message)));
  page.on('crash', () => errors.push('page crashed'));
  pageState.set(page, { context, errors, allowErrors: !!opts.allowErrors });
  return page;
}

const pageState = new WeakMap();
export function pageErrors(page) { return [...(pageState.get(page)?.errors ?? [])]; }
export function clearPageErrors(page) { const s = pageState.get(page); if (s) s.errors.length = 0; }
export function pageContext(page) { return pageState.get(page)?.context; }
export function pageAllowsErrors(page) { return pageState.get(page)?.allowErrors; }

let axeSource = null;
// axe-core's violations on the page (or only under opts.include, and not
// under opts.exclude: CSS selectors or arrays of them, e.g. exclude: 'rapi-doc'
// for a third-party widget). The
// script is evaluated through the DevTools protocol, so the page's CSP does
// not block it and the page needs no test hook. opts.rules / opts.tags go to
// axe.run (e.g. tags: ['wcag2a', 'wcag2aa']); opts.disable lists rule ids.
export async function axeCheck(page, opts = {}) {
  if (!axeSource) axeSource = await fsp.readFile(toolsRequire.resolve('axe-core/axe.min.js'), 'utf8');
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(axeSource);
  const runOpts = { resultTypes: ['violations'] };
  if (opts.tags) runOpts.runOnly = { type: 'tag', values: opts.tags };
  if (opts.rules) runOpts.runOnly = { type: 'rule', values: opts.rules };
  if (opts.disable) runOpts.rules = Object.fromEntries(opts.disable.map((r) => [r, { enabled: false }]));
  const ctx = {};
  if (opts.include) ctx.include = [].concat(opts.include);
  if (opts.exclude) ctx.exclude = [].concat(opts.exclude);
  const res = await page.evaluate(([c, o]) => window.axe.run(Object.keys(c).length ? c : document, o), [ctx, runOpts]);
  return res.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
    targets: v.nodes.map((n) => n.target.map((s) => (Array.isArray(s) ? s.join(' >> ') : s)).join(' >> ')),
  }));
}

// One line per rule; at most `max` of its elements (CSS selectors; a shadow
// DOM element as "host >> inner").
export function formatViolations(violations, max = 5) {
  return violations.map((v) => `${v.id} (${v.impact}): ${v.help} -- ${v.targets.slice(0, max).join(', ')}` +
    (v.targets.length > max ? ` and ${v.targets.length - max} more` : '')).join('\n');
}

export async function assertAccessible(page, opts = {}) {
  const v = await axeCheck(page, opts);
  if (v.length) throw new Error(`${v.length} accessibility violation(s) on ${page.url()}:\n` + formatViolations(v));
}

// A full-page PNG in dir (the artifacts directory); returns its path.
export async function screenshot(page, dir, name) {
  await fsp.mkdir(dir, { recursive: true });
  const file = path.join(dir, name.replace(/[^A-Za-z0-9._-]+/g, '_') + '.png');
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.json': 'application/json', '.png': 'image/png', '.svg': 'image/svg+xml',
  '.woff2': 'font/woff2', '.txt': 'text/plain; charset=utf-8',
};

// Serve dir on a free loopback port (127.0.0.1); opts.mounts maps more URL
// prefixes to directories ({'/static/': repoRoot + '/web/static'}). Every
// response carries opts.headers (by default the portal's CSP and nosniff).
// Returns {url, port, close()}.
export async function serveStatic(dir, opts = {}) {
  const mounts = Object.entries({ ...(opts.mounts ?? {}), '/': dir })
    .map(([prefix, d]) => [prefix, path.resolve(d)])
    .sort((a, b) => b[0].length - a[0].length);
  const headers = opts.headers ?? { 'Content-Security-Policy': PORTAL_CSP, 'X-Content-Type-Options': 'nosniff' };
  const server = http.createServer(async (req, res) => {
    const u = new URL(req.url, 'http://x');
    const pathname = decodeURIComponent(u.pathname);
    const [prefix, root] = mounts.find(([p]) => pathname.startsWith(p));
    let file = path.resolve(root, '.' + pathname.slice(prefix.length - 1));
    if (!file.startsWith(root + path.sep) && file !== root) { res.writeHead(403).end(); return; }
    try {
      if ((await fsp.stat(file)).isDirectory()) file = path.join(file, 'index.html');
      const body = await fsp.readFile(file);
      res.writeHead(200, { ...headers, 'Content-Type': TYPES[path.extname(file)] ?? 'application/octet-stream',
        'Content-Length': body.length, 'Cache-Control': 'no-store' });
      res.end(req.method === 'HEAD' ? undefined : body);
    } catch {
      res.writeHead(404, { ...headers, 'Content-Type': 'text/plain' }).end('not found');
    }
  });
  await new Promise((resolve, reject) => { server.once('error', reject); server.listen(0, '127.0.0.1', resolve); });
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`, port,
    close: () => new Promise((resolve) => { server.closeAllConnections?.(); server.close(() => resolve()); }),
  };
}

// A loopback TCP port that was free a moment ago (for starting a server binary).
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

export async function makeTmpdir(prefix = 'tollgate-browser-') {
  return fsp.mkdtemp(path.join(os.tmpdir(), prefix));
}
