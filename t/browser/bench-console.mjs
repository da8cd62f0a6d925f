// The console's first paint, for scripts/bench (the console scenario):
// Debian's chromium, headless, driven with playwright-core
// (t/browser/package.json), opens the console a number of times, each
// time in a new context (a new tab of a new profile: no cache, no
// cookies), with the key already in sessionStorage as if the admin had
// pasted it.  The bench passes in the environment variable BENCH_CONSOLE
// (JSON): url (the console), key, item (the sessionStorage item of
// console.js), loads, and filter ({status: [...], q: "..."} or null).
//
// Measured in the page, every time from the navigation's start
// (performance.timeOrigin):
//   paint    the first row of the list painted: the Element Timing API's
//            renderTime of the row's texts (an elementtiming attribute
//            set on them the moment the row is added, before any paint)
//   rows     the first row in the DOM (a MutationObserver)
//   list     the list request (GET .../invoices?...limit=...): its
//            PerformanceResourceTiming, start and end (responseEnd)
//   probe, summary   the key's probe (POST) and the totals (GET
//            .../summary, sent with the list), likewise; each load ends
//            when the totals are shown
// A filter is filled into the form when the document is parsed
// (readyState "interactive"), before console.js runs: the console's first
// list request is then the filtered one, as if the admin had applied it.
//
// Prints one JSON line per load, after one load that is not counted (the
// browser's first page); anything wrong (chromium does not start, no row
// and totals within 60 s, an error shown, no list request, a filter not
// in the request) is a line {"error": "..."} on stderr and exit status 1.

import { chromium } from 'playwright-core';

const B = JSON.parse(process.env.BENCH_CONSOLE || '{}');
const WAIT = 60000;

function fail(what) {
    throw new Error(what);
}

// in the page, before any of its scripts
function instrument(arg) {
    sessionStorage.setItem(arg.item, arg.key);
    const m = {};
    window.benchConsole = m;
    if (arg.filter) {
        document.addEventListener('readystatechange', () => {
            if (document.readyState !== 'interactive') {
                return;
            }
            const f = document.querySelector('#filters');
            for (const s of arg.filter.status ?? []) {
                f.querySelector(`input[name=status][value="${s}"]`).checked = true;
            }
            if (arg.filter.q) {
                f.elements.q.value = arg.filter.q;
            }
        });
    }
    new PerformanceObserver((entries) => {
        for (const e of entries.getEntries()) {
            if (e.identifier === 'bench-row' && m.paint === undefined) {
                m.paint = e.renderTime || e.loadTime;
            }
        }
    }).observe({ type: 'element', buffered: true });
    new MutationObserver((records, observer) => {
        const tr = document.querySelector('#list tbody tr[data-id]');
        if (!tr) {
            return;
        }
        observer.disconnect();
        m.rows = performance.now();
        for (const node of tr.querySelectorAll('td, td *')) {
            node.setAttribute('elementtiming', 'bench-row');
        }
    }).observe(document, { childList: true, subtree: true });
}

// in the page, once painted: the figures of this load
function collect() {
    const m = window.benchConsole;
    const timing = (pick) => {
        const e = performance.getEntriesByType('resource').filter(pick);
        return e.map((r) => ({ url: r.name, start: r.startTime, end: r.responseEnd }));
    };
    const api = document.querySelector('meta[name="invoices-api"]').content;
    const path = (r) => new URL(r.name).pathname;
    return {
        paint: m.paint,
        rows: m.rows,
        nrows: document.querySelectorAll('#list tbody tr[data-id]').length,
        count: document.querySelector('#count')?.dataset.count,
        list: timing((r) => path(r) === api && new URL(r.name).searchParams.has('limit')),
        probe: timing((r) => path(r) === api && !new URL(r.name).search),
        summary: timing((r) => path(r) === `${api}/summary`),
    };
}

async function load(browser) {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    try {
        await ctx.addInitScript(instrument, { key: B.key, item: B.item, filter: B.filter });
        const page = await ctx.newPage();
        const res = await page.goto(B.url);
        if (!res || res.status() !== 200) {
            fail(`GET ${B.url}: ${res && res.status()}`);
        }
        // the first row painted and the totals shown (so that no request of
        // this load still runs during the next), or the console showing an
        // error (a refused key)
        const shown = '#login-reason:not([hidden]), #error:not([hidden])';
        await page.waitForFunction((sel) => (window.benchConsole?.paint !== undefined
                                             && document.querySelector('#totals[data-count]'))
                                            || document.querySelector(sel),
                                   shown, { timeout: WAIT });
        if (await page.$(shown)) {
            fail(`the console shows an error: ${await page.textContent(shown)}`);
        }
        const c = await page.evaluate(collect);
        if (c.list.length !== 1 || c.probe.length !== 1 || c.summary.length !== 1) {
            fail(`not one list request, one probe and one summary: ${JSON.stringify(c)}`);
        }
        const asked = new URL(c.list[0].url).searchParams;
        for (const [k, v] of Object.entries(B.filter ?? {})) {
            const want = Array.isArray(v) ? v.join(',') : v;
            if (asked.get(k) !== want) {
                fail(`the list was asked without ${k}=${want}: ${c.list[0].url}`);
            }
        }
        const list = c.list[0];
        const summary = c.summary[0];
        return {
            paint: c.paint,
            rows: c.rows,
            api: list.end - list.start,
            listStart: list.start,
            listEnd: list.end,
            probe: c.probe[0].end - c.probe[0].start,
            summary: summary.end - summary.start,
            nrows: c.nrows,
            count: Number(c.count),
            url: list.url,
        };
    } finally {
        await ctx.close();
    }
}

async function main() {
    let browser;
    try {
        browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
                                          timeout: 60000 });
    } catch (e) {
        fail(`chromium does not start (/usr/bin/chromium, headless): ${e?.message || e}`);
    }
    try {
        await load(browser);
        for (let i = 0; i < (Number(B.loads) || 1); i++) {
            process.stdout.write(`${JSON.stringify(await load(browser))}\n`);
        }
    } finally {
        await browser.close();
    }
}

main().catch((e) => {
    process.stderr.write(`${JSON.stringify({ error: String(e?.message || e) })}\n`);
    process.exitCode = 1;
});
