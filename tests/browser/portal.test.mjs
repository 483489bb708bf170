// The developer portal in a real browser, against a real tollgate-server,
// tollgate-gateway and echo upstream (lib/platform.mjs starts them on free
// loopback ports in the test's temp dir): the whole journey of a developer
// who never saw Tollgate, the error paths of the forms, the portal without
// JavaScript, axe-core on every page, the API reference (RapiDoc under the
// docs CSP) and sign-up with email verification.
//
//   node tests/browser/run.mjs --only portal server=build/admin-api/tollgate-server \
//     gateway=build/gateway/tollgate-gateway cli=build/cli/tollgate \
//     upstream=build/tests/tollgate-test-upstream
import assert from 'node:assert/strict';
import { test, DOCS_CSP, PORTAL_CSP, formatViolations } from './lib/harness.mjs';
import { startPlatform } from './lib/platform.mjs';

const PASSWORD = 'a quiet tollgate in the hills 42';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- steps a developer takes (by label and button text, as a person would) ----

async function signUp(page, { email, name = '', password = PASSWORD }) {
  await page.goto('/signup');
  await page.getByLabel('Email address').fill(email);
  if (name) await page.getByLabel('Name (optional)').fill(name);
  await page.getByLabel('Password', { exact: true }).fill(password);
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.waitForLoadState('load');
}

async function signIn(page, email, password = PASSWORD) {
  await page.goto('/login');
  await page.getByLabel('Email address').fill(email);
  await page.getByLabel('Password', { exact: true }).fill(password);
  await page.getByRole('main').getByRole('button', { name: 'Sign in' }).click();
  await page.waitForLoadState('load');
}

// Create an app on /apps; returns its id (from the URL it lands on).
async function createApp(page, name, description = '') {
  await page.goto('/apps');
  await page.getByLabel('App name').fill(name);
  if (description) await page.getByLabel('Description (optional)').fill(description);
  await page.getByRole('button', { name: 'Create app' }).click();
  await page.waitForURL(/\/apps\/app_[^/?]+\?done=created$/);
  assert.equal(await page.getByRole('heading', { level: 1 }).innerText(), name);
  assert.equal(await page.getByRole('status').innerText(), 'App created.');
  return new URL(page.url()).pathname.split('/')[2];
}

async function subscribeFree(page) {
  await page.getByLabel('Subscribe to').selectOption({ label: 'Demo API: Free (Free)' });
  await page.getByRole('button', { name: 'Subscribe', exact: true }).click();
  await page.waitForURL(/\?done=subscribed$/);
  assert.equal(await page.getByRole('status').innerText(), 'Subscribed.');
  const row = page.locator('table', { has: page.locator('caption', { hasText: 'Subscriptions of this app' }) })
    .locator('tbody tr');
  assert.equal(await row.count(), 1);
  assert.match(await row.innerText(), /Demo API\s+Free\s+active/);
}

// Issue a key from the app page; returns the plaintext read from the key page.
async function issueKey(page, name) {
  if (name) await page.getByLabel('Key name (optional)').fill(name);
  await page.getByRole('button', { name: 'Issue a key' }).click();
  await page.waitForURL(/\/apps\/app_[^/]+\/keys$/);
  assert.equal(await page.getByRole('heading', { level: 1 }).innerText(), 'Your new key');
  const key = await page.getByLabel('API key').inputValue();
  assert.match(key, /^tg_live_[0-9A-Za-z]{40,}$/, 'the key page shows no key');
  return key;
}

// The calls column of the usage table, summed; and the row of today (UTC).
async function usageTable(page) {
  const rows = await page.locator('#usage-table tbody tr').evaluateAll((trs) =>
    trs.map((tr) => [...tr.cells].map((c) => c.textContent.trim())));
  const today = new Date().toISOString().slice(0, 10);
  return { rows, calls: rows.reduce((n, r) => n + Number(r[1]), 0), today: rows.find((r) => r[0] === today) };
}

// ---- 1. the journey ----

test('portal: the whole journey of a new developer', async (t) => {
  const p = await startPlatform(t);
  const page = await t.newPage({ baseURL: p.portal });

  // The catalog: the demo API and its two plans, nothing else needed to start.
  await page.goto('/');
  assert.equal(await page.title(), 'API catalog · Developer portal');
  const card = page.locator('.card', { hasText: 'Demo API' });
  assert.match(await card.innerText(), /Free: Free\. 5 requests per second, 1,000 requests per day \(UTC\)/);
  assert.match(await card.innerText(), /Pro: 49\.00 USD per month\./);
  await t.screenshot(page, 'portal-catalog');

  // The API page: plans, the gateway's base URL, the way to a key.
  await card.getByRole('link', { name: 'Demo API', exact: true }).click();
  await page.waitForURL(/\/apis\/demo$/);
  assert.equal(await page.getByRole('heading', { level: 1 }).innerText(), 'Demo API');
  assert.match(await page.locator('#main').innerText(), new RegExp(`Base URL: ${p.gatewayURL}/demo\\.`));
  const plans = page.locator('table.plans tbody tr');
  assert.equal(await plans.count(), 2);
  assert.match(await plans.nth(0).innerText(), /Free[\s\S]*Starts at once/);
  assert.match(await plans.nth(1).innerText(), /Pro[\s\S]*49\.00 USD per month[\s\S]*Needs the publisher's approval/);
  await page.locator('rapi-doc').waitFor();
  await page.waitForFunction(() => document.querySelector('rapi-doc')?.shadowRoot?.querySelector('[id^="get-"]'),
    null, { timeout: 20_000, polling: 100 });
  await t.screenshot(page, 'portal-api');

  // Sign up from the API page's invitation.
  await page.getByRole('main').getByRole('link', { name: 'Create an account' }).click();
  await page.waitForURL(/\/signup$/);
  await page.getByLabel('Email address').fill('ada@example.test');
  await page.getByLabel('Name (optional)').fill('Ada');
  await page.getByLabel('Password', { exact: true }).fill(PASSWORD);
  await t.screenshot(page, 'portal-signup');
  await page.getByRole('button', { name: 'Create account' }).click();

  // The dashboard greets and explains the three steps.
  await page.waitForURL(/\/dashboard\?done=welcome$/);
  assert.match(await page.getByRole('status').innerText(), /^Welcome!/);
  assert.match(await page.locator('.lead').innerText(), /Signed in as ada@example\.test/);
  assert.match(await page.locator('ol.steps').innerText(), new RegExp(`X-API-Key header to ${p.gatewayURL}`));
  await t.screenshot(page, 'portal-dashboard');

  // An app, subscribed to the free plan, with a key.
  const appId = await createApp(page, 'Weather widget', 'Shows the weather on my blog');
  await subscribeFree(page);
  await t.screenshot(page, 'portal-app');
  const key = await issueKey(page, 'laptop');
  assert.match(await page.locator('pre code').innerText(), new RegExp(`X-API-Key: ${key}" ${p.gatewayURL}/PATH`));
  await page.getByRole('button', { name: 'Copy' }).click();
  await page.waitForFunction(() => document.querySelector('.copy-status').textContent !== '');
  assert.match(await page.locator('.copy-status').innerText(), /^(Copied\.|Select the key and copy it\.)$/);
  await t.screenshot(page, 'portal-key');

  // The key works at the gateway (issued keys reach it within a second).
  await p.gatewayStatusWithin(key, 200, 3000);
  for (let i = 0; i < 2; i++) {
    const res = await p.callGateway(key, '/echo?call=' + i);
    assert.equal(res.status, 200);
    assert.match(await res.text(), /\/echo\?call=/);
  }
  const CALLS = 3;

  // The usage page shows them, in the table and in the chart: the gateway
  // flushes its counters every second; reload until they are there.
  await page.goto(`/apps/${appId}/usage`);
  const deadline = Date.now() + 15_000;
  let usage = await usageTable(page);
  while (usage.calls < CALLS && Date.now() < deadline) {
    await sleep(500);
    await page.reload();
    usage = await usageTable(page);
  }
  assert.equal(usage.calls, CALLS, 'usage table: ' + JSON.stringify(usage.rows));
  assert.equal(usage.rows.length, 7, 'default range: 7 days');
  assert.deepEqual(usage.today?.slice(1), [String(CALLS), '0', '0'], 'today: ' + JSON.stringify(usage.rows));
  assert.match(await page.locator('figcaption').innerText(), new RegExp(`Total: ${CALLS} calls, 0 errors, 0 refused\\.`));
  const chart = page.locator('#usage-chart[data-ready="true"]');
  await chart.waitFor();
  assert.equal(await chart.getAttribute('data-points'), '7');
  assert.ok(await chart.locator('canvas').count() >= 1, 'no canvas drawn');
  const series = await page.evaluate(async () => {
    const r = await fetch(document.getElementById('usage-chart').dataset.src);
    return r.json();
  });
  assert.equal(series.calls.reduce((a, b) => a + b, 0), CALLS, 'usage.json ' + JSON.stringify(series));
  await t.screenshot(page, 'portal-usage');

  // Rotate with no grace: the old key stops, the new one works.
  await page.goto(`/apps/${appId}`);
  await page.getByLabel('Old key works').selectOption({ label: 'not at all' });
  await page.getByRole('button', { name: 'Rotate' }).click();
  await page.waitForURL(/\/keys\/key_[^/]+\/rotate$/);
  const key2 = await page.getByLabel('API key').inputValue();
  assert.match(key2, /^tg_live_/);
  assert.notEqual(key2, key);
  assert.match(await page.locator('#main').innerText(), /The old key tg_live_\S+… stopped working\./);
  await p.gatewayStatusWithin(key, 401, 3000);
  await p.gatewayStatusWithin(key2, 200, 3000);

  // Revoke the new key (after the confirmation dialog): refused within 3 s.
  await page.getByRole('link', { name: 'Back to Weather widget' }).click();
  const keyRows = page.locator('table', { has: page.locator('caption', { hasText: 'Keys of this app' }) }).locator('tbody tr');
  assert.equal(await keyRows.count(), 2);
  assert.equal(await page.getByRole('button', { name: 'Revoke' }).count(), 1, 'only the live key can be revoked');
  const dialog = new Promise((resolve) => page.once('dialog', async (d) => { resolve(d.message()); await d.accept(); }));
  await page.getByRole('button', { name: 'Revoke' }).click();
  assert.match(await dialog, /^Revoke key tg_live_\S+\? Calls with it fail within a second\.$/);
  await page.waitForURL(/\?done=revoked$/);
  assert.match(await page.getByRole('status').innerText(), /^Key revoked/);
  assert.equal(await page.getByRole('button', { name: 'Revoke' }).count(), 0);
  assert.equal(await keyRows.filter({ hasText: 'revoked' }).count(), 2);
  await p.gatewayStatusWithin(key2, 401, 3000);

  // The account page.
  await page.getByRole('link', { name: 'Account' }).click();
  await page.waitForURL(/\/account$/);
  assert.match(await page.locator('dl.facts').innerText(), /Email\s+ada@example\.test\s+Name\s+Ada/);
  assert.match(await page.locator('table tbody').innerText(), /\(this one\)/);
  await t.screenshot(page, 'portal-account');

  // Signing out ends the session.
  await page.getByRole('button', { name: 'Sign out', exact: true }).click();
  await page.waitForURL(/\/login\?done=signedout$/);
  await page.goto(`/apps/${appId}`);
  assert.match(page.url(), new RegExp(`/login\\?next=/apps/${appId}$`));
}, { timeout: 90_000 });

// ---- 2. error paths ----

test('portal: form errors, bad sign-in, missing CSRF token', async (t) => {
  const p = await startPlatform(t, { gateway: false });
  const page = await t.newPage({ baseURL: p.portal });
  const expectStatus = async (status, action) => {
    const [res] = await Promise.all([page.waitForResponse((r) => r.request().isNavigationRequest()), action()]);
    await page.waitForLoadState('load');
    assert.equal(res.status(), status, `${res.request().method()} ${res.url()}`);
    return res;
  };
  const email = page.getByLabel('Email address');
  const password = page.getByLabel('Password', { exact: true });
  const submit = page.getByRole('button', { name: 'Create account' });

  await signUp(page, { email: 'grace@example.test' });
  await page.waitForURL(/\/dashboard/);
  await page.getByRole('button', { name: 'Sign out', exact: true }).click();
  await page.waitForURL(/\/login\?done=signedout$/);

  // The same address again (open mode says so): the error is next to the
  // email field, the typed address is kept, the password is not.
  await page.goto('/signup');
  await email.fill('Grace@Example.test');
  await password.fill(PASSWORD);
  await expectStatus(409, () => submit.click());
  assert.equal(await page.getByRole('alert').innerText(), 'Please correct the marked fields.');
  assert.equal(await email.inputValue(), 'Grace@Example.test');
  assert.equal(await email.getAttribute('aria-invalid'), 'true');
  const emailError = page.locator('#email-error');
  assert.match(await emailError.innerText(), /already|exists|registered|in use/i);
  assert.equal(await email.getAttribute('aria-describedby'), 'email-error');
  assert.equal(await emailError.evaluate((e) => e.parentElement === document.getElementById('email').parentElement), true);
  assert.equal(await password.inputValue(), '');
  await t.screenshot(page, 'portal-signup-errors');

  // Too short, then a common password.
  for (const [pw, want] of [['short pw', /12/], ['password1234', /common|guess/i]]) {
    await email.fill('hopper@example.test');
    await password.fill(pw);
    await expectStatus(422, () => submit.click());
    assert.equal(await password.getAttribute('aria-invalid'), 'true');
    assert.match(await page.locator('#password-error').innerText(), want);
    assert.equal(await page.locator('#email-error').count(), 0);
    assert.equal(await email.inputValue(), 'hopper@example.test');
    assert.equal(await password.inputValue(), '');
  }

  // A wrong password: an error, and no session.
  await page.goto('/login');
  await email.fill('grace@example.test');
  await password.fill('not the password at all');
  await expectStatus(401, () => page.getByRole('main').getByRole('button', { name: 'Sign in' }).click());
  assert.ok((await page.locator('#password-error').innerText()).length > 5);
  assert.equal(await password.getAttribute('aria-invalid'), 'true');
  assert.equal(await email.inputValue(), 'grace@example.test');
  const cookies = await page.context().cookies();
  assert.equal(cookies.find((c) => c.name === 'tg_session'), undefined, JSON.stringify(cookies));
  await page.goto('/dashboard');
  assert.match(page.url(), /\/login\?next=\/dashboard$/);

  // A form whose CSRF token was removed: 403, nothing done.
  await page.goto('/signup');
  await email.fill('mallory@example.test');
  await password.fill(PASSWORD);
  await page.evaluate(() => { document.querySelector('form[action="/signup"] input[name="csrf"]').value = ''; });
  await expectStatus(403, () => submit.click());
  assert.equal(await page.getByRole('heading', { level: 1 }).innerText(), 'This form has expired');
  await signIn(page, 'grace@example.test');
  assert.match(page.url(), /\/dashboard$/);
  // ... also for a signed-in form (bound to the session).
  await page.goto('/apps');
  await page.getByLabel('App name').fill('Should not exist');
  await page.evaluate(() => { document.querySelector('form[action="/apps"] input[name="csrf"]').remove(); });
  await expectStatus(403, () => page.getByRole('button', { name: 'Create app' }).click());
  await page.goto('/apps');
  assert.equal(await page.locator('.cards .card').count(), 0);
  assert.equal((await p.adminMust('GET', '/developers?email=mallory%40example.test')).data.length, 0);

  // Chromium logs each 4xx document as a console error: those were the point.
  const errs = t.errors(page);
  assert.ok(errs.every((e) => /status of (401|403|409|422)/.test(e)), errs.join('\n'));
  t.clearErrors(page);
}, { timeout: 60_000 });

// ---- 3. without JavaScript ----

test('portal: every form works without JavaScript', async (t) => {
  const p = await startPlatform(t, { gateway: false });
  const page = await t.newPage({ baseURL: p.portal, javaScriptEnabled: false });
  await signUp(page, { email: 'nojs@example.test', name: 'No Script' });
  assert.match(page.url(), /\/dashboard\?done=welcome$/);
  const appId = await createApp(page, 'Plain HTML');
  await subscribeFree(page);
  const key = await issueKey(page);
  // No script: the copy button cannot copy, the key is still there to select.
  assert.equal(await page.getByLabel('API key').getAttribute('readonly'), '');
  await page.goto(`/apps/${appId}`);
  await page.getByLabel('Old key works').selectOption('3600');
  await page.getByRole('button', { name: 'Rotate' }).click();
  const key2 = await page.getByLabel('API key').inputValue();
  assert.notEqual(key2, key);
  assert.match(await page.locator('#main').innerText(), /keeps working until \d{4}-\d\d-\d\d \d\d:\d\d UTC/);
  // data-confirm forms submit without a dialog when there is no script.
  await page.goto(`/apps/${appId}`);
  assert.equal(await page.getByRole('button', { name: 'Revoke' }).count(), 2);
  await page.getByRole('button', { name: 'Revoke' }).first().click();
  await page.waitForURL(/\?done=revoked$/);
  assert.equal(await page.getByRole('button', { name: 'Revoke' }).count(), 1);
  await page.getByRole('button', { name: 'Cancel subscription' }).click();
  await page.waitForURL(/\?done=cancelled$/);
  await page.getByLabel('App name').fill('Plain HTML, renamed');
  await page.getByRole('button', { name: 'Save' }).click();
  await page.waitForURL(/\?done=renamed$/);
  assert.equal(await page.getByRole('heading', { level: 1 }).innerText(), 'Plain HTML, renamed');
  // The usage page without its chart: the table has the numbers.
  await page.goto(`/apps/${appId}/usage?range=24h`);
  assert.equal(await page.locator('#usage-table tbody tr').count(), 24);
  assert.equal(await page.locator('#usage-chart canvas').count(), 0);
  // Sign out, sign in, delete the app.
  await page.getByRole('button', { name: 'Sign out', exact: true }).click();
  await page.waitForURL(/done=signedout/);
  await signIn(page, 'nojs@example.test');
  assert.match(page.url(), /\/dashboard$/);
  await page.goto(`/apps/${appId}`);
  await page.getByRole('button', { name: 'Delete app' }).click();
  await page.waitForURL(/\/apps\?done=deleted$/);
  assert.equal(await page.locator('.cards .card').count(), 0);
  const keys = (await p.adminMust('GET', `/keys?app_id=${appId}`)).data;
  assert.equal(keys.length, 2);
  assert.ok(keys.every((k) => k.status === 'revoked'), JSON.stringify(keys.map((k) => k.status)));
}, { timeout: 60_000 });

// ---- 4. accessibility ----

test('portal: axe-core finds no violation on any page', async (t) => {
  const p = await startPlatform(t, { gateway: false });
  const page = await t.newPage({ baseURL: p.portal });
  const found = [];
  const check = async (what, opts) => {
    const v = await t.a11y(page, opts);
    if (v.length) found.push(`${what} (${page.url()}):\n  ` + formatViolations(v).replace(/\n/g, '\n  '));
  };
  await page.goto('/');
  await check('catalog');
  await page.goto('/apis/demo');
  await page.waitForFunction(() => document.querySelector('rapi-doc')?.shadowRoot?.querySelector('[id^="get-"]'),
    null, { timeout: 20_000, polling: 100 });
  await page.waitForFunction(() => !document.querySelector('rapi-doc').shadowRoot.querySelector('main:not([role])'));
  await check('API page', { exclude: 'rapi-doc' });
  await page.goto('/signup');
  await check('sign-up');
  await page.getByLabel('Email address').fill('not an address');
  await page.getByLabel('Password', { exact: true }).fill('short');
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.locator('.error-summary').waitFor();
  await check('sign-up with errors');
  await page.goto('/login');
  await check('sign-in');
  await page.getByLabel('Email address').fill('nobody@example.test');
  await page.getByLabel('Password', { exact: true }).fill('wrong password here');
  await page.getByRole('main').getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#password-error').waitFor().catch(async (e) => {
    throw new Error(e.message + '\n' + page.url() + '\n' + await page.locator('#main').innerText());
  });
  await check('sign-in with an error');
  await page.goto('/password/forgot');
  await check('forgot password');
  await signUp(page, { email: 'axe@example.test' });
  await check('dashboard');
  const appId = await createApp(page, 'Accessible app');
  await check('apps list');
  await subscribeFree(page);
  await check('app page');
  await issueKey(page, 'k');
  await check('key page');
  await page.goto(`/apps/${appId}/usage`);
  await page.locator('#usage-chart[data-ready="true"]').waitFor();
  await check('usage page');
  await page.goto('/account');
  await check('account page');
  await page.goto('/apps/app_00000000000000000000000000');
  await check('not found page');
  assert.equal(found.length, 0, 'accessibility violations:\n' + found.join('\n'));
  // the 4xx documents above (422 sign-up, 401 sign-in, 404) log console errors
  const errs = t.errors(page);
  assert.ok(errs.every((e) => /status of (401|404|422)/.test(e)), errs.join('\n'));
  t.clearErrors(page);
}, { timeout: 60_000 });

// ---- 5. the API reference ----

const directives = (csp) => Object.fromEntries(csp.split(';').map((d) => d.trim()).filter(Boolean)
  .map((d) => { const [k, ...v] = d.split(/\s+/); return [k, v.join(' ')]; }));

test('portal: the API reference renders in RapiDoc under the docs CSP', async (t) => {
  const p = await startPlatform(t, { gateway: false });
  const page = await t.newPage({ baseURL: p.portal });

  // The reference page sends the docs CSP (web/README.md), every other page the strict one.
  const res = await page.goto('/apis/demo');
  const docs = directives(res.headers()['content-security-policy']);
  for (const [k, v] of Object.entries(directives(DOCS_CSP))) assert.equal(docs[k], v, `docs CSP ${k}`);
  for (const [k, v] of Object.entries(docs)) assert.ok(directives(DOCS_CSP)[k] === v || v === "'none'", `extra ${k} ${v}`);
  assert.doesNotMatch(docs['script-src'], /unsafe|nonce/);
  const plain = directives((await page.request.get('/')).headers()['content-security-policy']);
  for (const [k, v] of Object.entries(directives(PORTAL_CSP))) assert.equal(plain[k], v, `portal CSP ${k}`);
  assert.equal(plain['style-src-attr'], undefined);

  // RapiDoc draws the document: the operation, its parameter and response.
  await page.waitForFunction(() => document.querySelector('rapi-doc')?.shadowRoot?.querySelector('[id^="get-"]'),
    null, { timeout: 20_000, polling: 100 });
  const text = await page.evaluate(() => document.querySelector('rapi-doc').shadowRoot.textContent);
  for (const want of ['Demo echo API', 'Answers every request with what it received.', 'Echo the request', '/echo']) {
    assert.ok(text.includes(want), `"${want}" not in the reference`);
  }
  // Its stylesheet (allowed by hash) applied, style attributes too.
  assert.equal(await page.evaluate(() => getComputedStyle(document.querySelector('rapi-doc').shadowRoot
    .querySelector('.body')).display), 'flex', 'RapiDoc\'s stylesheet was blocked');
  // One main landmark: the <main> RapiDoc renders in its shadow root is
  // made a region by web/js/portal.js (role selectors pierce shadow roots).
  await page.waitForFunction(() => !document.querySelector('rapi-doc').shadowRoot.querySelector('main:not([role])'));
  assert.equal(await page.getByRole('main').count(), 1);
  assert.equal(await page.getByRole('region', { name: 'API reference' }).count(), 1);
  // The document it read is the API's, with the gateway as its server.
  const doc = await (await page.request.get('/apis/demo/openapi.json')).json();
  assert.equal(doc.info.title, 'Demo echo API');
  assert.ok(await page.getByRole('link', { name: 'Download the OpenAPI document' }).isVisible());
  await sleep(300); // late CSP reports and console errors
  assert.deepEqual(t.errors(page), []);
  await t.screenshot(page, 'portal-api-reference');

  // An API without a document has no reference and the strict CSP.
  await p.adminMust('PUT', '/apis/plain', { name: 'Plain API', path_prefix: '/plain' });
  const res2 = await page.goto('/apis/plain');
  assert.equal(res2.status(), 200);
  assert.equal(directives(res2.headers()['content-security-policy'])['style-src'], "'self'");
  assert.equal(await page.locator('rapi-doc').count(), 0);
  assert.equal(await page.getByRole('heading', { name: 'Reference' }).count(), 0);
}, { timeout: 60_000 });

// ---- 6. sign-up with email verification ----

test('portal: sign-up in verify mode, confirmed by the emailed link', async (t) => {
  const p = await startPlatform(t, { signup: 'verify', gateway: false, demo: false });
  const page = await t.newPage({ baseURL: p.portal });
  await signUp(page, { email: 'lin@example.test', name: 'Lin' });
  assert.match(page.url(), /\/signup$/);
  assert.equal(await page.getByRole('heading', { level: 1 }).innerText(), 'Check your email');
  assert.match(await page.locator('#main').innerText(), /We sent a message to lin@example\.test\./);
  assert.equal((await page.context().cookies()).find((c) => c.name === 'tg_session'), undefined);

  // Not confirmed yet: no sign-in.
  await signIn(page, 'lin@example.test');
  assert.equal(await page.getByRole('heading', { level: 1 }).innerText(), 'Confirm your email address');
  assert.ok(t.errors(page).every((e) => /status of 403/.test(e)), t.errors(page).join('\n'));
  t.clearErrors(page);

  // The link from the outbox (the admin API's GET /mail).
  const mail = (await p.adminMust('GET', '/mail')).data.filter((m) => m.to_addr === 'lin@example.test' && m.kind === 'verify');
  assert.ok(mail.length >= 1, 'no verify mail in the outbox');
  const links = mail.map((m) => m.body.match(/https?:\/\/\S+\/verify\?token=\S+/)?.[0]).filter(Boolean);
  assert.ok(links.length >= 1, 'no link in ' + JSON.stringify(mail[0].body));
  const link = links[links.length - 1];
  assert.ok(link.startsWith(p.portal + '/verify?token='), `${link} is not on ${p.portal}`);
  await page.goto(link);
  assert.equal(await page.getByRole('heading', { level: 1 }).innerText(), 'Confirm your email address');
  await t.assertAccessible(page);
  await page.getByRole('button', { name: 'Confirm my address' }).click();
  await page.waitForURL(/\/login\?done=verified$/);
  assert.equal(await page.getByRole('status').innerText(), 'Email address confirmed: sign in to continue.');

  // The link works once.
  const again = await page.goto(link);
  assert.equal(again.status(), 400);
  assert.equal(await page.getByRole('heading', { level: 1 }).innerText(), 'This link does not work');
  t.clearErrors(page);

  await signIn(page, 'lin@example.test');
  assert.match(page.url(), /\/dashboard$/);
  assert.match(await page.locator('.lead').innerText(), /Signed in as lin@example\.test/);
}, { timeout: 60_000 });
