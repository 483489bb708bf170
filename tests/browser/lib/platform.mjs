// A whole Tollgate on loopback for the portal's browser tests: the test
// upstream (an echo server), tollgate-gateway and tollgate-server (admin API
// + developer portal) on ports the kernel picks, in the test's temp dir,
// with the demo API registered (a target, an OpenAPI document, two public
// plans: "free" starts at once, "pro" needs the publisher's approval).
//
//   const p = await startPlatform(t);                 // t from the runner
//   p.portal, p.admin, p.gatewayURL                   // base URLs
//   await p.adminCall('GET', '/mail')                 // -> {status, body}
//   p.callGateway(key, '/echo')                       // -> Response
//
// The binaries come from t.options (server=, gateway=, cli=, upstream=;
// tests/meson.build passes them), else from <repo>/build. Everything is
// stopped by t.defer (SIGTERM, SIGKILL after 5 s), also when the test
// failed or timed out; a process exit handler SIGKILLs whatever is left if
// the runner itself dies.
import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { repoRoot } from './harness.mjs';

const run = promisify(execFile);
const START_TIMEOUT = 15_000;

const live = new Set();
const killAll = () => { for (const c of live) try { c.kill('SIGKILL'); } catch { /* gone */ } };
process.on('exit', killAll);
// A runner stopped by a signal (meson's timeout, Ctrl-C) leaves no daemon behind.
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => { killAll(); process.exit(128 + ({ SIGHUP: 1, SIGINT: 2, SIGTERM: 15 })[sig]); });
}

export const DEMO_OPENAPI = {
  openapi: '3.0.3',
  info: { title: 'Demo echo API', version: '1.0.0', description: 'Answers every request with what it received.' },
  paths: {
    '/echo': {
      get: {
        summary: 'Echo the request',
        operationId: 'echo',
        parameters: [{ name: 'q', in: 'query', required: false, schema: { type: 'string' }, description: 'Anything' }],
        responses: { 200: { description: 'The request as the upstream saw it',
          content: { 'application/json': { schema: { type: 'object' } } } } },
      },
    },
  },
};

function binaries(t) {
  const o = t.options ?? {};
  const b = (k, rel) => path.resolve(o[k] || path.join(repoRoot, 'build', rel));
  const bins = {
    server: b('server', 'admin-api/tollgate-server'),
    gateway: b('gateway', 'gateway/tollgate-gateway'),
    cli: b('cli', 'cli/tollgate'),
    upstream: b('upstream', 'tests/tollgate-test-upstream'),
  };
  for (const [k, f] of Object.entries(bins)) {
    if (!fs.existsSync(f)) throw new Error(`${k} binary ${f} not found: pass ${k}=PATH (tests/meson.build does)`);
  }
  return bins;
}

function cleanEnv() {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TOLLGATE_')));
}

// A child process whose `stream` lines are kept (and copied to dir/name.log)
// and searched for the ports named by `patterns` ({key: /regex with (\d+)/}).
class Daemon {
  constructor(name, argv, dir, patterns, stream = 'stderr') {
    this.name = name;
    this.argv = argv;
    this.lines = [];
    this.found = {};
    this.exited = null;
    const log = fs.openSync(path.join(dir, name + '.log'), 'a');
    this.proc = spawn(argv[0], argv.slice(1), {
      cwd: dir, env: cleanEnv(),
      stdio: ['ignore', stream === 'stdout' ? 'pipe' : log, stream === 'stderr' ? 'pipe' : log],
    });
    fs.closeSync(log);
    live.add(this.proc);
    this.done = new Promise((resolve) => {
      this.proc.once('exit', (code, sig) => { live.delete(this.proc); this.exited = sig || code; resolve(); });
      this.proc.once('error', (e) => { live.delete(this.proc); this.exited ??= 'spawn error: ' + e.message; resolve(); });
    });
    this.ports = new Promise((resolve0, reject0) => {
      let timer = null;
      const resolve = (v) => { clearTimeout(timer); resolve0(v); };
      const reject = (e) => { clearTimeout(timer); reject0(e); };
      let buf = '';
      const out = stream === 'stdout' ? this.proc.stdout : this.proc.stderr;
      const copy = fs.createWriteStream(path.join(dir, name + '.log'), { flags: 'a' });
      out.on('data', (chunk) => {
        copy.write(chunk);
        buf += chunk.toString('utf8');
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          this.lines.push(line);
          if (this.lines.length > 400) this.lines.shift();
          for (const [k, rx] of Object.entries(patterns)) {
            const m = rx.exec(line);
            if (m && !(k in this.found)) this.found[k] = Number(m[1]);
          }
          if (Object.keys(this.found).length === Object.keys(patterns).length) resolve(this.found);
        }
      });
      out.on('end', () => copy.end());
      timer = setTimeout(() => reject(new Error(this.why('printed no port within ' + START_TIMEOUT + ' ms'))),
        START_TIMEOUT);
      this.proc.once('exit', () => reject(new Error(this.why('exited before printing its port'))));
      this.proc.once('error', (e) => reject(new Error(this.why('could not start: ' + e.message))));
    });
    this.ports.catch(() => {}); // awaited by the caller; never an unhandled rejection
  }

  why(what) {
    return `${this.name} ${what} (exit ${this.exited})\n  argv: ${this.argv.join(' ')}\n  output:\n    ` +
      this.lines.slice(-30).join('\n    ');
  }

  async stop() {
    if (this.exited !== null) return this.exited;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => { if (this.exited === null) this.proc.kill('SIGKILL'); }, 5000);
    await this.done;
    clearTimeout(t);
    return this.exited;
  }
}

async function waitFor(fn, what, timeout = START_TIMEOUT) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      if (await fn()) return;
    } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`${what}: not within ${timeout} ms${last ? ' (' + last.message + ')' : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Start the platform; registers its own stop with t.defer.
//   opts.signup   'open' (default), 'verify' or 'approval' (--portal-signup)
//   opts.gateway  false: no gateway and no upstream (a portal-only server)
//   opts.demo     false: register no API
export async function startPlatform(t, opts = {}) {
  const bins = binaries(t);
  const signup = opts.signup ?? 'open';
  const withGateway = opts.gateway ?? true;
  const dir = fs.mkdtempSync(path.join(t.tmpdir, 'platform-'));
  const config = path.join(dir, 'empty.conf');
  fs.writeFileSync(config, '');
  const common = ['--config', config, '--db-path', path.join(dir, 'tollgate.db'),
    '--secret-file', path.join(dir, 'tollgate.secret')];
  const cli = async (...args) => {
    try {
      return (await run(bins.cli, [...common, ...args], { cwd: dir, env: cleanEnv(), timeout: 30_000 })).stdout;
    } catch (e) {
      throw new Error(`tollgate ${args.join(' ')}: exit ${e.code}\n${e.stderr || e.message}`);
    }
  };
  const daemons = [];
  const p = { dir, daemons, signup };
  p.stop = async () => {
    // the server and the gateway first (they flush), the upstream last
    const order = [...daemons].reverse();
    const codes = [];
    const bad = [];
    for (const d of order) {
      const early = d.exited;
      const code = await d.stop();
      codes.push([d.name, code]);
      // a daemon that died during the test, or did not stop cleanly, is a failure
      if (early !== null) bad.push(d.why('died during the test'));
      else if (code !== 0) bad.push(d.why('did not exit cleanly on SIGTERM'));
      // nothing the tests do should make the server or the gateway log an error
      const errors = d.lines.filter((l) => /^\S+ (error|fatal|crit\w*) /.test(l));
      if (errors.length) bad.push(`${d.name} logged errors:\n    ` + errors.slice(0, 10).join('\n    '));
    }
    daemons.length = 0;
    if (bad.length) throw new Error(bad.join('\n'));
    return codes;
  };
  t.defer(p.stop);

  await cli('migrate');
  p.token = (await cli('admin-token', 'create', '--name', 'browser', '--scopes', 'admin')).trim();
  if (!p.token.startsWith('tg_adm_')) throw new Error('unexpected admin token ' + JSON.stringify(p.token));

  if (withGateway) {
    const up = new Daemon('upstream', [bins.upstream, '--listen', '127.0.0.1:0', '--name', 'demo'], dir,
      { port: /^listening on 127\.0\.0\.1:(\d+)$/ }, 'stdout');
    daemons.push(up);
    p.upstreamURL = `http://127.0.0.1:${(await up.ports).port}`;
    const gw = new Daemon('gateway', [bins.gateway, ...common, '--gateway-listen', '127.0.0.1:0',
      '--status-listen', '127.0.0.1:0', '--config-poll-interval', '50ms', '--log-format', 'text'], dir,
    { port: /\bport=(\d+)\b/, status: /\bstatus_port=(\d+)/ });
    daemons.push(gw);
    const ports = await gw.ports;
    p.gatewayURL = `http://127.0.0.1:${ports.port}`;
    p.statusURL = `http://127.0.0.1:${ports.status}`;
  }

  const srvArgs = [bins.server, ...common, '--admin-listen', '127.0.0.1:0', '--portal-listen', '127.0.0.1:0',
    '--portal-signup', signup, '--log-format', 'text'];
  if (p.gatewayURL) srvArgs.push('--portal-gateway-url', p.gatewayURL);
  const srv = new Daemon('server', srvArgs, dir, { admin: /admin API listening .*\bport=(\d+)\b/, portal: /\bportal_port=(\d+)\b/ });
  daemons.push(srv);
  const sp = await srv.ports;
  p.admin = `http://127.0.0.1:${sp.admin}`;
  p.portal = `http://127.0.0.1:${sp.portal}`;
  p.server = srv;
  p.gateway = daemons.find((d) => d.name === 'gateway');

  p.adminCall = async (method, urlPath, body) => {
    const res = await fetch(p.admin + urlPath, {
      method,
      headers: { Authorization: 'Bearer ' + p.token, ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}) },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
    return { status: res.status, body: json, text };
  };
  const must = async (method, urlPath, body) => {
    const r = await p.adminCall(method, urlPath, body);
    if (r.status < 200 || r.status > 299) throw new Error(`admin ${method} ${urlPath}: HTTP ${r.status} ${r.text.slice(0, 500)}`);
    return r.body;
  };
  p.adminMust = must;

  await waitFor(async () => (await fetch(p.admin + '/health')).status === 200, 'admin API /health');
  await waitFor(async () => (await fetch(p.portal + '/health')).status === 200, 'portal /health');
  if (p.statusURL) await waitFor(async () => (await fetch(p.statusURL + '/health')).status === 200, 'gateway /health');

  if (opts.demo ?? true) {
    p.api = await must('PUT', '/apis/demo', {
      name: 'Demo API', description: 'An echo API: it answers with the request it received.',
      path_prefix: '/demo', strip_prefix: true, openapi: DEMO_OPENAPI,
    });
    if (p.upstreamURL) await must('POST', '/apis/demo/targets', { url: p.upstreamURL });
    p.plans = {
      free: await must('POST', '/plans', { api_id: p.api.id, slug: 'free', name: 'Free',
        description: 'For trying it out', rate_per_second: 5, quota_per_day: 1000 }),
      pro: await must('POST', '/plans', { api_id: p.api.id, slug: 'pro', name: 'Pro', rate_per_second: 100,
        quota_per_month: 1000000, monthly_fee_minor: 4900, included_calls: 100000, overage_price_micros: 50000,
        currency: 'USD', requires_approval: true }),
    };
  }

  // One call through the gateway with an API key (X-API-Key), never cached.
  p.callGateway = (key, sub = '/echo', init = {}) => fetch(p.gatewayURL + (p.api?.path_prefix ?? '/demo') + sub, {
    ...init, headers: { ...(key ? { 'X-API-Key': key } : {}), ...(init.headers ?? {}) },
  });
  // Poll until the gateway answers `status` for key (bounded); returns ms taken.
  p.gatewayStatusWithin = async (key, status, ms) => {
    const t0 = Date.now();
    let last;
    for (;;) {
      const r = await p.callGateway(key);
      await r.arrayBuffer();
      last = r.status;
      if (last === status) return Date.now() - t0;
      if (Date.now() - t0 > ms) throw new Error(`the gateway answered ${last}, not ${status}, for ${ms} ms`);
      await new Promise((r2) => setTimeout(r2, 100));
    }
  };
  return p;
}
