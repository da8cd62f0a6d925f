// The admin console in a real browser, for t/console.t: Debian's chromium,
// headless, driven with playwright-core (t/browser/package.json).  The
// test file starts the stack, seeds it and passes what it expects in the
// environment variable CONSOLE_TEST (JSON: url, keys, invoice ids, counts,
// the output directory).  Each check is printed as one JSON line,
// {"ok": true|false, "name": "...", "diag": "..."}, which t/console.t turns
// into a test; {"screenshot": path} names a picture taken; the last line
// is {"done": true}.  A browser that cannot start is {"ok": false} for the
// check "chromium starts", never a skip.

import { chromium } from 'playwright-core';
import { readFile } from 'node:fs/promises';

const T = JSON.parse(process.env.CONSOLE_TEST || '{}');
const CONSOLE = `${T.base}/admin/console/`;
const API = `${T.base}/admin/api/invoices`;
// a wait for the page, longer where nginx runs slower (valgrind, ASan)
const WAIT = 15000 * (Number(T.timeFactor) || 1);

const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
          + "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

function out(obj) {
    process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function check(ok, name, diag) {
    out(ok ? { ok: true, name } : { ok: false, name, diag: String(diag ?? '') });
    return Boolean(ok);
}

function same(got, want, name) {
    const g = JSON.stringify(got);
    const w = JSON.stringify(want);
    return check(g === w, name, `got ${g}\nwant ${w}`);
}

// a step of checks: an exception (a timeout waiting for the page) fails it
async function step(name, fn) {
    try {
        await fn();
    } catch (e) {
        check(false, name, e?.stack || e);
    }
}

// everything a page did that a check looks at afterwards
function watch(page, seen) {
    page.on('dialog', async (d) => {
        seen.dialogs.push(`${d.type()}: ${d.message()}`);
        await d.dismiss().catch(() => {});
    });
    page.on('console', (m) => {
        if (m.type() === 'error' || m.type() === 'warning') {
            seen.console.push({ type: m.type(), text: m.text(), url: m.location()?.url ?? '' });
        }
    });
    page.on('pageerror', (e) => seen.console.push({ type: 'pageerror', text: String(e), url: '' }));
    page.on('request', (r) => seen.requests.push({ method: r.method(), url: r.url(),
                                                  headers: r.headers() }));
    page.on('response', (r) => {
        if (r.url().startsWith(CONSOLE)) {
            seen.consoleResponses.push({ url: r.url(), status: r.status(), headers: r.headers() });
        }
    });
}

function newSeen() {
    return { dialogs: [], console: [], requests: [], consoleResponses: [] };
}

const rowIds = (page) => page.$$eval('#list tbody tr[data-id]', (trs) => trs.map((t) => t.dataset.id));

// waits until the list shows exactly these ids
async function waitRows(page, ids) {
    await page.waitForFunction((want) => {
        const got = [...document.querySelectorAll('#list tbody tr[data-id]')].map((t) => t.dataset.id);
        return JSON.stringify(got) === JSON.stringify(want);
    }, ids, { timeout: WAIT });
}

async function waitCount(page, n) {
    await page.waitForFunction((want) => document.querySelector('#count')?.dataset.count === String(want),
                                n, { timeout: WAIT });
}

async function login(page, key) {
    await page.fill('#key-input', key);
    await page.click('#key-form button[type=submit]');
}

async function applyFilters(page, f) {
    await page.click('#clear');
    await page.waitForTimeout(50);
    for (const s of f.status ?? []) {
        await page.check(`#filters input[name=status][value=${s}]`);
    }
    for (const name of ['q', 'customer']) {
        if (f[name]) {
            await page.fill(`#filters input[name=${name}]`, f[name]);
        }
    }
    if (f.limit) {
        await page.selectOption('#filters select[name=limit]', String(f.limit));
    }
    await page.click('#apply');
}

async function openRow(page, id) {
    await page.click(`#list tbody tr[data-id="${id}"] button.open`);
    await page.waitForFunction((want) => {
        const d = document.querySelector('#detail');
        return d && !d.hidden && d.dataset.id === want;
    }, id, { timeout: WAIT });
}

const field = (page, name) => page.textContent(`#fields dd[data-field="${name}"]`);

async function main() {
    let browser;
    try {
        browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
                                          timeout: 60000 });
        check(true, 'chromium starts (/usr/bin/chromium, headless)');
    } catch (e) {
        check(false, 'chromium starts (/usr/bin/chromium, headless)', e?.stack || e);
        return;
    }
    try {
        await writeKeyChecks(browser);
        await readKeyChecks(browser);
    } finally {
        await browser.close();
    }
}

async function writeKeyChecks(browser) {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 },
                                           acceptDownloads: true });
    const page = await ctx.newPage();
    const seen = newSeen();
    watch(page, seen);

    await step('the console loads', async () => {
        const res = await page.goto(CONSOLE);
        check(res && res.status() === 200, 'GET /admin/console/: 200', res && res.status());
        await page.waitForSelector('#key-input', { state: 'visible', timeout: WAIT });
        check(true, 'the key form is shown');
    });

    await step('a wrong key is refused', async () => {
        await login(page, 'not-a-key-of-this-server');
        await page.waitForSelector('#login-reason:not([hidden])', { timeout: WAIT });
        const why = await page.textContent('#login-reason');
        check(/refused/.test(why) && /another key/.test(why),
              'a wrong key: the console says it was refused and asks for another', why);
        check(await page.isHidden('#app'), 'a wrong key: no list shown');
    });

    await step('log in with the write key', async () => {
        await login(page, T.writeKey);
        await page.waitForSelector('#list tbody tr[data-id]', { timeout: WAIT });
        await waitCount(page, T.total);
        check(true, `logged in: the list shows the exact count (${T.total})`);
        const who = await page.textContent('#whoami');
        check(/write key/.test(who), 'the console knows a write key', who);
        same(await page.evaluate(() => sessionStorage.getItem('invoices-console-api-key')),
             T.writeKey, 'the key is kept in sessionStorage');
        same(await page.evaluate(() => [document.cookie, localStorage.length]), ['', 0],
             'no cookie, nothing in localStorage');
        check(!page.url().includes(T.writeKey), 'the key is not in the page URL', page.url());
        check(await page.isVisible('#create'), 'a write key sees the create form');
    });

    await step('the summary', async () => {
        await page.waitForFunction((n) => document.querySelector('#totals')?.dataset.count === String(n),
                                   T.total, { timeout: WAIT });
        const cells = await page.$$eval('#totals tbody tr', (trs) => trs.map((t) => t.textContent));
        check(cells.some((c) => /^usd/.test(c)) && cells.some((c) => /^eur/.test(c)),
              'totals per currency: eur and usd rows', cells.join(' | '));
    });

    await step('page forward and back with cursors', async () => {
        await applyFilters(page, { limit: 10 });
        const all = T.order;
        await waitRows(page, all.slice(0, 10));
        check(true, 'page 1: the 10 newest, in the API order');
        check(await page.isDisabled('#prev'), 'page 1: Previous is disabled');
        same(await page.textContent('#range'), `1–10 of ${T.total}`, 'page 1: range 1–10');
        await page.click('#next');
        await waitRows(page, all.slice(10, 20));
        check(true, 'Next: invoices 11 to 20');
        await page.click('#next');
        await waitRows(page, all.slice(20, 30));
        check(true, `Next again: invoices 21 to ${Math.min(30, all.length)}`);
        same(await page.textContent('#range'), `21–${Math.min(30, all.length)} of ${T.total}`,
             'the last page: its range');
        check(await page.isDisabled('#next'), 'the last page: Next is disabled (has_more false)');
        await page.click('#prev');
        await waitRows(page, all.slice(10, 20));
        check(true, 'Previous: invoices 11 to 20 again');
        await page.click('#prev');
        await waitRows(page, all.slice(0, 10));
        check(true, 'Previous again: page 1');
        check(await page.isDisabled('#prev'), 'back on page 1: Previous is disabled');
        const urls = seen.requests.filter((r) => r.url.startsWith(API)).map((r) => r.url);
        check(urls.some((u) => /starting_after=/.test(u)) && urls.some((u) => /ending_before=/.test(u)),
              'the pages were read with starting_after and ending_before',
              urls.join('\n'));
    });

    await step('filter by status', async () => {
        await applyFilters(page, { status: ['open'], limit: 100 });
        await waitCount(page, T.openCount);
        check(true, `status=open: the exact count (${T.openCount})`);
        await page.waitForFunction((n) => document.querySelectorAll('#list tbody tr[data-id]').length === n,
                                   T.openCount, { timeout: WAIT });
        const statuses = await page.$$eval('#list tbody tr[data-id] .status',
                                           (s) => s.map((x) => x.textContent));
        check(statuses.length === T.openCount && statuses.every((s) => s === 'open'),
              'status=open: every row is open', statuses.join(','));
        await page.waitForFunction((n) => document.querySelector('#totals')?.dataset.count === String(n),
                                   T.openCount, { timeout: WAIT });
        check(true, 'status=open: the totals are of the filter');
        const last = seen.requests.filter((r) => r.url.startsWith(`${API}?`)).pop();
        check(last && /[?&]status=open(&|$)/.test(last.url), 'the list was asked with status=open',
              last?.url);
    });

    await step('a bad filter: the API error with its message and param', async () => {
        await applyFilters(page, { customer: 'not-a-customer' });
        await page.waitForSelector('#error:not([hidden])', { timeout: WAIT });
        const text = await page.textContent('#error');
        check(/^400 invalid_request_error/.test(text), 'the error box: 400 invalid_request_error', text);
        same(await page.textContent('#error .error-param code'), 'customer',
             'the error box names the parameter (customer)');
        check((await page.textContent('#error .error-message')).length > 5, 'and gives its message', text);
        await applyFilters(page, {});
        await page.waitForSelector('#error', { state: 'hidden', timeout: WAIT });
        check(true, 'a good filter clears the error');
    });

    await step('search (q) and the XSS name', async () => {
        await applyFilters(page, { q: 'onerror' });
        await waitRows(page, [T.xssId]);
        check(true, 'q=onerror: the one invoice whose customer name holds it');
        same(await page.textContent(`#list tr[data-id="${T.xssId}"] .customer-name`), T.xssName,
             'the customer name is shown as the literal text');
        same(await page.$$eval('#list img, #list script', (n) => n.length), 0,
             'no element was made from the name');
        await openRow(page, T.xssId);
        same(await field(page, 'customerName'), T.xssName,
             'the invoice view shows the name as text');
        same(await page.$$eval('#detail img, #detail script', (n) => n.length), 0,
             'no element in the invoice view either');
        await page.waitForTimeout(300);
        same(seen.dialogs, [], 'no alert or other dialog fired');
    });

    await step('the list screenshot', async () => {
        await page.click('#detail-close');
        check(await page.isHidden('#detail'), 'Close hides the invoice view');
        await applyFilters(page, { limit: 10 });
        await waitRows(page, T.order.slice(0, 10));
        await page.evaluate(() => window.scrollTo(0, 0));
        const path = `${T.outDir}/console-list.png`;
        await page.screenshot({ path, fullPage: true });
        out({ screenshot: path });
    });

    await step('open an invoice: fields and history', async () => {
        await openRow(page, T.voidId);
        same(await field(page, 'invoiceId'), T.voidInvoiceId, 'the invoice view: its Stripe id');
        same(await field(page, 'status'), 'open', 'the invoice view: its status');
        same(await field(page, 'amount'), T.voidAmountText, 'the invoice view: its amount as money');
        same(await field(page, 'customer'), T.customer, 'the invoice view: its customer');
        const hist = await page.$$eval('#timeline li', (l) => l.map((x) => x.textContent));
        check(hist.some((h) => /create by ops: 201/.test(h)), 'the history shows the create (key ops, 201)',
              hist.join('\n'));
        const links = await page.$$eval('#links a', (a) => a.map((x) => [x.textContent, x.href, x.rel]));
        check(links.some(([t, h]) => t === 'Hosted invoice page' && /^https:/.test(h)),
              'the hosted page is linked', JSON.stringify(links));
        check(links.every(([, , rel]) => /noopener/.test(rel) && /noreferrer/.test(rel)),
              'links open with noopener noreferrer', JSON.stringify(links));
        const buttons = await page.$$eval('#actions button', (b) => b.map((x) => [x.dataset.action, x.disabled]));
        same(buttons, [['finalize', true], ['pay', false], ['send', false], ['void', false],
                       ['mark_uncollectible', false], ['delete', true]],
             'an open invoice: the actions its status allows, the others disabled');
        const reason = await page.textContent('#actions .action:has([data-action=finalize]) .reason');
        check(/needs draft/.test(reason) && /open/.test(reason), 'a disabled action says why', reason);
    });

    await step('void an open invoice', async () => {
        await page.click('#actions button[data-action=void]');
        await page.waitForSelector('#confirm[open]', { timeout: WAIT });
        check(/Void invoice/.test(await page.textContent('#confirm-text')),
              'Void asks for a confirmation first');
        same(seen.requests.filter((r) => r.method === 'POST' && /\/void$/.test(r.url)).length, 0,
             'nothing is sent before the confirmation');
        await page.click('#confirm-ok');
        // while it is in flight (the fake Stripe answers slowly), the
        // buttons are disabled: clicks on them do nothing
        const inFlight = await page.evaluate(() => {
            const b = document.querySelector('#actions button[data-action=void]');
            const was = b.disabled;
            b.click();
            b.click();
            return [was, document.querySelector('#confirm').open];
        });
        same(inFlight, [true, false], 'in flight: Void is disabled and a second click opens nothing');
        await page.waitForFunction(() => document.querySelector('#detail')?.dataset.status === 'void',
                                   null, { timeout: WAIT });
        check(true, 'the invoice view shows it void');
        await page.waitForFunction((id) => document.querySelector(`#list tr[data-id="${id}"] .status`)
                                               ?.textContent === 'void', T.voidId, { timeout: WAIT });
        check(true, "the list row's status changes to void");
        check(/is now void/.test(await page.textContent('#notice')), 'a notice says it is void');
        const posts = seen.requests.filter((r) => r.method === 'POST' && /\/void$/.test(r.url));
        same(posts.length, 1, 'the console sent one void request');
        check(posts.length && /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/
                  .test(posts[0].headers['idempotency-key'] ?? ''),
              'with a fresh Idempotency-Key (a random UUID)', JSON.stringify(posts[0]?.headers));
        const hist = await page.$$eval('#timeline li', (l) => l.map((x) => x.textContent));
        check(hist.some((h) => /void by ops: 200/.test(h)), 'the history shows the void',
              hist.join('\n'));
        const path = `${T.outDir}/console-invoice.png`;
        await page.locator('#detail').screenshot({ path });
        out({ screenshot: path });
    });

    await step("a Stripe error is shown", async () => {
        await applyFilters(page, { limit: 25 });
        await waitCount(page, T.total);
        await openRow(page, T.payId);
        await page.click('#actions button[data-action=pay]');
        await page.waitForSelector('#confirm[open]', { timeout: WAIT });
        await page.click('#confirm-ok');
        await page.waitForSelector('#error:not([hidden])', { timeout: WAIT });
        const text = await page.textContent('#error');
        check(/402/.test(text) && /stripe_error/.test(text), 'the error box: status 402, stripe_error', text);
        check(/Your card was declined/.test(text), "the error box: Stripe's message", text);
        await page.waitForFunction(() => !document.querySelector('#actions button[data-action=pay]')?.disabled,
                                   null, { timeout: WAIT });
        same(await field(page, 'status'), 'open', 'the invoice stays open, its buttons usable again');
    });

    await step('export the current filter', async () => {
        await applyFilters(page, { status: ['paid'] });
        await waitCount(page, T.paidCount);
        for (const [button, ext] of [['#export-csv', 'csv'], ['#export-ndjson', 'ndjson']]) {
            const [dl] = await Promise.all([page.waitForEvent('download', { timeout: WAIT }),
                                            page.click(button)]);
            check(new RegExp(`^invoices-\\d{8}\\.${ext}$`).test(dl.suggestedFilename()),
                  `${ext}: saved as the API names it`, dl.suggestedFilename());
            const text = await readFile(await dl.path(), 'utf8');
            const lines = text.split('\n').filter((l) => l.length);
            same(lines.length, T.paidCount + (ext === 'csv' ? 1 : 0),
                 `${ext}: every paid invoice${ext === 'csv' ? ' and a header row' : ''}`);
        }
        const exp = seen.requests.filter((r) => r.url.startsWith(`${API}/export`));
        check(exp.length === 2 && exp.every((r) => /status=paid/.test(r.url)
                                             && r.headers['api-key'] === T.writeKey),
              'the exports were fetched with the filter, the key in the header',
              exp.map((r) => r.url).join('\n'));
    });

    await step('create an invoice from the form', async () => {
        await applyFilters(page, {});
        await waitCount(page, T.total);
        await page.click('#create-open summary');
        await page.fill('#create-form input[name=customer]', T.customer);
        await page.fill('#items .item input[name=item-name]', 'Console line');
        await page.fill('#items .item input[name=item-amount]', '4321');
        await page.click('#create-submit');
        await page.waitForSelector('#confirm[open]', { timeout: WAIT });
        await page.click('#confirm-ok');
        await page.waitForFunction(() => /Created in_/.test(document.querySelector('#notice')?.textContent ?? ''),
                                   null, { timeout: WAIT });
        check(true, 'the create form: a notice names the new invoice');
        await waitCount(page, T.total + 1);
        check(true, 'the list counts it at once');
        const first = await page.textContent('#list tbody tr[data-id] .num');
        same(first, T.createdAmountText, 'the new invoice is first in the list');
        const post = seen.requests.filter((r) => r.method === 'POST' && r.url === API
                                                && r.headers['idempotency-key']);
        same(post.length, 1, 'one create request, with an Idempotency-Key');
    });

    await step('the console answers carry the security headers', async () => {
        const urls = seen.consoleResponses.map((r) => r.url.replace(T.base, ''));
        for (const want of ['/admin/console/', '/admin/console/console.js',
                            '/admin/console/console.css']) {
            check(urls.includes(want), `the browser loaded ${want}`, urls.join(' '));
        }
        for (const r of seen.consoleResponses) {
            const h = r.headers;
            const path = r.url.replace(T.base, '');
            check(h['content-security-policy'] === CSP
                  && h['x-content-type-options'] === 'nosniff'
                  && h['referrer-policy'] === 'no-referrer',
                  `${path}: Content-Security-Policy, X-Content-Type-Options, Referrer-Policy`,
                  JSON.stringify(h));
        }
    });

    finalPageChecks('write key', seen);
    await ctx.close();
}

async function readKeyChecks(browser) {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await ctx.newPage();
    const seen = newSeen();
    watch(page, seen);

    await step('a read key', async () => {
        await page.goto(CONSOLE);
        await login(page, T.readKey);
        await page.waitForSelector('#list tbody tr[data-id]', { timeout: WAIT });
        const who = await page.textContent('#whoami');
        check(/read key/.test(who), 'the console knows a read key', who);
        check(await page.isHidden('#create'), 'a read key sees no create form');
        await openRow(page, T.payId);
        same(await page.$$eval('#actions button', (b) => b.length), 0,
             'a read key sees no action buttons on an open invoice');
        check(/read key/.test(await page.textContent('#actions')), 'and is told why');
        check(await page.isHidden('#error'), 'the scope probe shows no error');
    });

    await step('forget the key', async () => {
        await page.click('#forget-key');
        await page.waitForSelector('#key-input', { state: 'visible', timeout: WAIT });
        same(await page.evaluate(() => sessionStorage.length), 0, 'Use another key: sessionStorage is empty');
        check(await page.isHidden('#app'), 'and the list is gone');
    });

    finalPageChecks('read key', seen);
    await ctx.close();
}

// The checks on everything a page did: no key in a URL, no dialog, no
// console error but the API's own refusals that the checks caused (a 4xx
// answer is logged by Chromium as "Failed to load resource"); a CSP
// violation or a script error is an error here.
function finalPageChecks(who, seen) {
    const keyInUrl = seen.requests.filter((r) => [T.writeKey, T.readKey].some((k) => r.url.includes(k)));
    same(keyInUrl.map((r) => r.url), [], `${who}: the key is in no request URL`);
    const apiUrls = seen.requests.filter((r) => r.url.startsWith(API));
    check(apiUrls.length && apiUrls.every((r) => r.headers['api-key']),
          `${who}: every API request carries the Api-Key header`);
    same(seen.dialogs, [], `${who}: no dialog opened`);
    const expected = /^Failed to load resource: the server responded with a status of 40[0-3] /;
    const bad = seen.console.filter((m) => !(m.type === 'error' && expected.test(m.text)
                                               && m.url.startsWith(API)));
    check(!bad.length, `${who}: no error or warning in the page's console (CSP violations included)`,
          `${bad.length} messages, the first:\n`
          + bad.slice(0, 3).map((m) => `${m.type} at ${m.url}: ${m.text}`).join('\n'));
}

main().then(() => out({ done: true }), (e) => {
    check(false, 'the browser script ran to its end', e?.stack || e);
    out({ done: true });
});
