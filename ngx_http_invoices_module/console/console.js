// The invoice admin console (index.html): plain JavaScript, no framework,
// no build step.  It calls the admin API exactly as any client does
// (docs/openapi.yaml), with the Api-Key the admin pasted, kept in this
// tab's sessionStorage and sent only in the Api-Key header: never in a
// URL, a cookie or a log line.
//
// Every value the API returns reaches the page as text (el() below appends
// strings as text nodes, attributes are set one by one): the console never
// parses HTML it did not write, so an invoice's customer name cannot become
// markup, and the page runs under a Content-Security-Policy with no inline
// script or style.

const API = (document.querySelector('meta[name="invoices-api"]')
             ?.getAttribute('content') || '/admin/api/invoices').replace(/\/+$/, '');
const KEY_ITEM = 'invoices-console-api-key';
const STATUSES = ['draft', 'open', 'paid', 'uncollectible', 'void'];

// What each action needs (Stripe's state graph, as the API checks it).
const ACTIONS = [
    { name: 'finalize', label: 'Finalize', from: ['draft'] },
    { name: 'pay', label: 'Pay', from: ['open', 'uncollectible'] },
    { name: 'send', label: 'Send', from: ['open'] },
    { name: 'void', label: 'Void', from: ['open', 'uncollectible'], danger: true },
    { name: 'mark_uncollectible', label: 'Mark uncollectible', from: ['open'],
      danger: true },
    { name: 'delete', label: 'Delete draft', from: ['draft'], method: 'DELETE',
      danger: true },
];

const $ = (sel) => document.querySelector(sel);

const state = {
    key: null,
    scope: null,        // 'write', 'read', or 'nostripe' (writes answer 405)
    filters: new URLSearchParams(),
    limit: 25,
    cursor: null,       // ['starting_after' | 'ending_before', id] or null
    offset: 0,          // how many matching invoices lie before this page
    rows: [],
    count: 0,
    hasPrev: false,
    hasNext: false,
    loadSeq: 0,         // the latest list request; older answers are dropped
    totalsSeq: 0,
    selected: null,     // the _id of the invoice shown
    acting: false,      // an action is in flight
};

//----------------------------------------------------------------------
// the DOM, text only

// el('tag', {class, id, type, dataset, attrs, on}, ...children): children
// are nodes or strings (appended as text), null and false are skipped.
function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
        if (v === undefined || v === null || v === false) {
            continue;
        }
        if (k === 'class') {
            node.className = v;
        } else if (k === 'dataset') {
            Object.assign(node.dataset, v);
        } else if (k === 'attrs') {
            for (const [a, av] of Object.entries(v)) {
                node.setAttribute(a, String(av));
            }
        } else if (k === 'on') {
            for (const [ev, fn] of Object.entries(v)) {
                node.addEventListener(ev, fn);
            }
        } else {
            node[k] = v;
        }
    }
    for (const c of children.flat()) {
        if (c !== null && c !== undefined && c !== false) {
            node.append(c instanceof Node ? c : String(c));
        }
    }
    return node;
}

function show(node, yes = true) {
    node.hidden = !yes;
}

function formatTime(iso) {
    if (!iso) {
        return '—';
    }
    // 2026-11-01T09:30:00.000Z -> 2026-11-01 09:30 UTC
    const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})/.exec(iso);
    return m ? `${m[1]} ${m[2]} UTC` : String(iso);
}

function formatDate(iso) {
    return iso ? String(iso).slice(0, 10) : '—';
}

// An amount in the currency's smallest unit, as money (EUR 33.00).
function money(amount, currency) {
    if (amount === null || amount === undefined) {
        return '—';
    }
    const code = String(currency || '').toUpperCase();
    try {
        const f = new Intl.NumberFormat('en', { style: 'currency', currency: code });
        const digits = f.resolvedOptions().maximumFractionDigits;
        return f.format(Number(amount) / 10 ** digits);
    } catch {
        return `${amount} ${currency ?? ''}`.trim();
    }
}

function statusBadge(status) {
    const known = STATUSES.includes(status) ? ` status-${status}` : '';
    return el('span', { class: `status${known}`, dataset: { status: status ?? '' } },
              status ?? '—');
}

// an http(s) link from the API, or null for anything else (javascript:...)
function safeLink(url, text) {
    let u;
    try {
        u = new URL(url);
    } catch {
        return null;
    }
    if (u.protocol !== 'https:' && u.protocol !== 'http:') {
        return null;
    }
    return el('a', { href: u.href, target: '_blank', rel: 'noopener noreferrer' }, text);
}

//----------------------------------------------------------------------
// messages

class ApiError extends Error {
    constructor(status, error) {
        super(error?.message || `HTTP ${status}`);
        this.status = status;
        this.error = error || {};
    }
}

function clearMessages() {
    show($('#error'), false);
    show($('#notice'), false);
}

function notice(text) {
    const n = $('#notice');
    n.textContent = text;
    show(n);
}

// Every API error with its message and param (and Stripe's own, inside);
// a 401 or 403 asks for another key.
function showError(err) {
    const box = $('#error');
    box.replaceChildren();
    if (!(err instanceof ApiError)) {
        box.append(el('strong', {}, 'The API could not be reached: '),
                   String(err?.message || err));
        show(box);
        return;
    }
    const e = err.error;
    const kind = [e.type, e.code].filter(Boolean).join(' · ');
    box.append(el('strong', { class: 'error-status' }, `${err.status}`),
               kind ? ` ${kind}: ` : ': ',
               el('span', { class: 'error-message' }, e.message || 'no message'));
    if (e.param) {
        box.append(el('div', { class: 'error-param' }, 'parameter: ',
                      el('code', {}, e.param)));
    }
    if (e.stripe && typeof e.stripe === 'object') {
        const s = e.stripe;
        box.append(el('div', { class: 'error-stripe' }, 'Stripe said: ',
                      [s.type, s.code].filter(Boolean).join(' · '),
                      s.message ? ` — ${s.message}` : ''));
    }
    show(box);
    if (err.status === 401) {
        askForKey(`The key was refused (${e.message || 'not valid'}). Paste another key.`,
                  true);
    } else if (err.status === 403) {
        askForKey(`This key may not do that (${e.message || 'forbidden'}). `
                  + 'Paste a key that may.', false);
    }
}

//----------------------------------------------------------------------
// the API

function newIdempotencyKey() {
    if (crypto.randomUUID) {
        return crypto.randomUUID();
    }
    // outside a secure context: a version 4 UUID from getRandomValues
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-`
           + `${h.slice(16, 20)}-${h.slice(20)}`;
}

// api(method, path, {params, json, idem, raw}) -> the decoded body (or the
// Response itself with raw); an error answer throws ApiError.
async function api(method, path, opt = {}) {
    const headers = { 'Api-Key': state.key, Accept: 'application/json' };
    const init = { method, headers, cache: 'no-store', credentials: 'omit',
                   referrerPolicy: 'no-referrer' };
    if (opt.json !== undefined) {
        headers['Content-Type'] = 'application/json';
        init.body = JSON.stringify(opt.json);
    }
    if (opt.idem) {
        headers['Idempotency-Key'] = opt.idem;
    }
    const qs = opt.params && String(opt.params);
    const res = await fetch(API + path + (qs ? `?${qs}` : ''), init);
    if (res.ok && opt.raw) {
        return res;
    }
    let body = null;
    const text = await res.text();
    try {
        body = text ? JSON.parse(text) : null;
    } catch {
        body = null;
    }
    if (!res.ok) {
        throw new ApiError(res.status, body?.error
                           || { message: `HTTP ${res.status} ${res.statusText}` });
    }
    return body;
}

//----------------------------------------------------------------------
// the key

function askForKey(reason, forget) {
    if (forget) {
        sessionStorage.removeItem(KEY_ITEM);
        state.key = null;
        show($('#app'), false);
        show($('#whoami'), false);
        show($('#forget-key'), false);
    }
    const r = $('#login-reason');
    r.textContent = reason || '';
    show(r, Boolean(reason));
    show($('#login'));
    $('#key-input').value = '';
    $('#key-input').focus();
}

// The API tells no key's scope, so the console asks with a request that
// can change nothing: a create with an empty body.  A read key is refused
// with 403 before the body is read; a write key gets 400 (no items); a
// server without a Stripe key answers 405 (it creates nothing).
async function probeScope() {
    try {
        await api('POST', '', { json: {} });
        return 'write';
    } catch (err) {
        if (!(err instanceof ApiError)) {
            throw err;
        }
        if (err.status === 401) {
            throw err;
        }
        if (err.status === 403 && err.error.type === 'permission_error') {
            return 'read';
        }
        if (err.status === 405) {
            return 'nostripe';
        }
        return 'write';
    }
}

async function useKey(key) {
    state.key = key;
    clearMessages();
    let scope;
    try {
        scope = await probeScope();
    } catch (err) {
        if (err instanceof ApiError && err.status === 401) {
            askForKey(`The key was refused (${err.error.message || 'not valid'}). `
                      + 'Paste another key.', true);
        } else {
            askForKey(`The API could not be asked: ${err.message}`, true);
        }
        return;
    }
    sessionStorage.setItem(KEY_ITEM, key);
    state.scope = scope;
    document.body.dataset.scope = scope;
    show($('#login'), false);
    show($('#app'));
    show($('#forget-key'));
    const who = $('#whoami');
    who.textContent = {
        write: 'write key: lists, creates and acts',
        read: 'read key: lists only (no actions, no creating)',
        nostripe: 'this server has no Stripe key: lists only',
    }[scope];
    show(who);
    show($('#create'), scope === 'write');
    closeInvoice();
    await applyFilters();
}

//----------------------------------------------------------------------
// the filters and the list

function filtersFromForm() {
    const f = $('#filters');
    const p = new URLSearchParams();
    const statuses = [...f.querySelectorAll('input[name=status]:checked')]
        .map((c) => c.value);
    if (statuses.length) {
        p.set('status', statuses.join(','));
    }
    for (const name of ['q', 'team', 'customer', 'currency']) {
        const v = f.elements[name].value.trim();
        if (v) {
            p.set(name, v);
        }
    }
    const day = (name, suffix) => {
        const v = f.elements[name].value;
        return v ? `${v}T${suffix}Z` : '';
    };
    const ranges = [
        ['created[gte]', day('created_from', '00:00:00')],
        ['created[lte]', day('created_to', '23:59:59.999')],
        ['dueDate[gte]', day('due_from', '00:00:00')],
        ['dueDate[lte]', day('due_to', '23:59:59.999')],
        ['amount[gte]', f.elements.amount_min.value.trim()],
        ['amount[lte]', f.elements.amount_max.value.trim()],
    ];
    for (const [k, v] of ranges) {
        if (v) {
            p.set(k, v);
        }
    }
    return p;
}

async function applyFilters() {
    state.filters = filtersFromForm();
    state.limit = Number($('#filters').elements.limit.value) || 25;
    state.cursor = null;
    state.offset = 0;
    await Promise.all([loadPage(), loadTotals()]);
}

// the list page of state.cursor; dir: 'next', 'prev' or none (first page
// or the same page again)
async function loadPage(dir) {
    const seq = ++state.loadSeq;
    const p = new URLSearchParams(state.filters);
    p.set('limit', String(state.limit));
    let cursor = state.cursor;
    if (dir === 'next' && state.rows.length) {
        cursor = ['starting_after', state.rows[state.rows.length - 1]._id];
    } else if (dir === 'prev' && state.rows.length) {
        cursor = ['ending_before', state.rows[0]._id];
    }
    if (cursor) {
        p.set(cursor[0], cursor[1]);
    }
    $('#prev').disabled = true;
    $('#next').disabled = true;
    let data;
    try {
        data = await api('GET', '', { params: p });
    } catch (err) {
        if (seq === state.loadSeq) {
            showError(err);
            renderPager();
        }
        return;
    }
    if (seq !== state.loadSeq) {
        return;
    }
    const rows = Array.isArray(data?.invoices) ? data.invoices : [];
    // has_more looks in the direction read: on a page read backwards it
    // says whether newer invoices lie before it
    if (dir === 'next') {
        state.offset += state.rows.length;
        state.hasPrev = true;
        state.hasNext = Boolean(data.has_more);
    } else if (dir === 'prev') {
        state.offset = Math.max(0, state.offset - rows.length);
        state.hasPrev = Boolean(data.has_more);
        state.hasNext = true;
        if (!state.hasPrev) {
            state.offset = 0;
        }
    } else if (!cursor) {
        state.offset = 0;
        state.hasPrev = false;
        state.hasNext = Boolean(data.has_more);
    } else if (cursor[0] === 'starting_after') {
        state.hasNext = Boolean(data.has_more);
    } else {
        state.hasPrev = Boolean(data.has_more);
    }
    state.cursor = cursor;
    state.rows = rows;
    state.count = Number(data.count) || 0;
    renderList();
}

function renderPager() {
    $('#prev').disabled = !state.hasPrev;
    $('#next').disabled = !state.hasNext;
    const n = state.rows.length;
    $('#range').textContent = n
        ? `${state.offset + 1}–${state.offset + n} of ${state.count}`
        : `0 of ${state.count}`;
}

function renderList() {
    const tbody = $('#list tbody');
    tbody.replaceChildren();
    $('#count').textContent = `${state.count} matching`;
    $('#count').dataset.count = String(state.count);
    for (const inv of state.rows) {
        const cust = el('td', { class: 'customer' },
                        el('span', { class: 'customer-name' }, inv.customerName ?? '—'));
        if (inv.customerEmail) {
            cust.append(el('br'), el('span', { class: 'muted' }, inv.customerEmail));
        }
        const tr = el('tr', {
            dataset: { id: inv._id, invoiceId: inv.invoiceId ?? '' },
            class: inv._id === state.selected ? 'selected' : undefined,
            on: { click: () => openInvoice(inv._id, true) },
        },
        el('td', {}, el('button', { type: 'button', class: 'open' },
                        inv.number || inv.invoiceId || inv._id)),
        el('td', {}, formatTime(inv.createdAt)),
        el('td', { class: 'team' }, inv.user?.name ?? '—'),
        cust,
        el('td', { class: 'status-cell' }, statusBadge(inv.status)),
        el('td', { class: 'num' }, money(inv.amount, inv.currency)),
        el('td', {}, formatDate(inv.dueDate)));
        tbody.append(tr);
    }
    if (!state.rows.length) {
        tbody.append(el('tr', {}, el('td', { colSpan: 7, class: 'muted' },
                                     'No invoice matches.')));
    }
    renderPager();
}

async function loadTotals() {
    const seq = ++state.totalsSeq;
    let data;
    try {
        data = await api('GET', '/summary', { params: state.filters });
    } catch (err) {
        if (seq === state.totalsSeq) {
            showError(err);
        }
        return;
    }
    if (seq !== state.totalsSeq) {
        return;
    }
    const tbody = $('#totals tbody');
    tbody.replaceChildren();
    const byCurrency = new Map();
    for (const t of data?.totals ?? []) {
        if (!byCurrency.has(t.currency)) {
            byCurrency.set(t.currency, []);
        }
        byCurrency.get(t.currency).push(t);
    }
    const row = (cls, cur, status, t) => el('tr', { class: cls },
        el('td', {}, cur), el('td', {}, status),
        el('td', { class: 'num' }, String(t.count)),
        el('td', { class: 'num' }, money(t.amount, cur)),
        el('td', { class: 'num' }, money(t.amountDue, cur)),
        el('td', { class: 'num' }, money(t.amountPaid, cur)),
        el('td', { class: 'num' }, money(t.amountRemaining, cur)));
    for (const [cur, list] of byCurrency) {
        for (const t of list) {
            tbody.append(row(undefined, cur, t.status, t));
        }
        if (list.length > 1) {
            // one currency's statuses add up; currencies never do
            const sum = (k) => list.reduce((s, t) => s + (Number(t[k]) || 0), 0);
            tbody.append(row('total', cur, 'all', {
                count: sum('count'), amount: sum('amount'), amountDue: sum('amountDue'),
                amountPaid: sum('amountPaid'), amountRemaining: sum('amountRemaining'),
            }));
        }
    }
    if (!byCurrency.size) {
        tbody.append(el('tr', {}, el('td', { colSpan: 7, class: 'muted' }, 'Nothing.')));
    }
    $('#totals').dataset.count = String(data?.count ?? 0);
}

//----------------------------------------------------------------------
// one invoice

const FIELDS = [
    ['_id', 'ID'], ['invoiceId', 'Stripe invoice'], ['number', 'Number'],
    ['status', 'Status'], ['amount', 'Amount', 'money'], ['currency', 'Currency'],
    ['amountDue', 'Due', 'money'], ['amountPaid', 'Paid', 'money'],
    ['amountRemaining', 'Remaining', 'money'], ['user', 'Team', 'team'],
    ['customer', 'Customer'], ['customerName', 'Customer name'],
    ['customerEmail', 'Customer email'], ['createdAt', 'Created', 'time'],
    ['updatedAt', 'Updated', 'time'], ['dueDate', 'Due date', 'time'],
    ['finalizedAt', 'Finalized', 'time'], ['paidAt', 'Paid at', 'time'],
    ['voidedAt', 'Voided', 'time'],
];
const NOT_FIELDS = new Set(['invoicePdf', 'hostedInvoiceUrl']);

// openInvoice(id, scroll): the invoice and its history; scroll: bring
// the view into sight (a click on a row)
async function openInvoice(id, scroll = false) {
    state.selected = id;
    for (const tr of document.querySelectorAll('#list tbody tr')) {
        tr.classList.toggle('selected', tr.dataset.id === id);
    }
    let inv;
    let history;
    try {
        [inv, history] = await Promise.all([
            api('GET', `/${encodeURIComponent(id)}`),
            api('GET', `/${encodeURIComponent(id)}/events`),
        ]);
    } catch (err) {
        showError(err);
        return;
    }
    if (state.selected !== id) {
        return;
    }
    renderInvoice(inv, history);
    if (scroll) {
        $('#detail').scrollIntoView({ block: 'start' });
    }
}

function closeInvoice() {
    state.selected = null;
    show($('#detail'), false);
    for (const tr of document.querySelectorAll('#list tbody tr.selected')) {
        tr.classList.remove('selected');
    }
}

function fieldValue(inv, key, kind) {
    const v = inv[key];
    if (kind === 'money') {
        return money(v, inv.currency);
    }
    if (kind === 'time') {
        return formatTime(v);
    }
    if (kind === 'team') {
        return v ? `${v.name ?? ''} (${v._id ?? ''})` : '—';
    }
    if (key === 'status') {
        return statusBadge(v);
    }
    if (v === null || v === undefined || v === '') {
        return '—';
    }
    return typeof v === 'object' ? JSON.stringify(v) : String(v);
}

function renderInvoice(inv, history) {
    const d = $('#detail');
    d.dataset.id = inv._id ?? '';
    d.dataset.status = inv.status ?? '';
    $('#detail-title').textContent = `Invoice ${inv.number || inv.invoiceId || inv._id}`;

    const dl = $('#fields');
    dl.replaceChildren();
    const seen = new Set();
    for (const [key, label, kind] of FIELDS) {
        seen.add(key);
        dl.append(el('dt', {}, label),
                  el('dd', { dataset: { field: key } }, fieldValue(inv, key, kind)));
    }
    for (const key of Object.keys(inv)) {
        if (!seen.has(key) && !NOT_FIELDS.has(key)) {
            dl.append(el('dt', {}, key),
                      el('dd', { dataset: { field: key } }, fieldValue(inv, key)));
        }
    }

    const links = $('#links');
    links.replaceChildren();
    const pdf = inv.invoicePdf ? safeLink(inv.invoicePdf, 'PDF') : null;
    const hosted = inv.hostedInvoiceUrl
        ? safeLink(inv.hostedInvoiceUrl, 'Hosted invoice page') : null;
    links.append(pdf ?? el('span', { class: 'muted' }, 'No PDF yet'), ' ',
                 hosted ?? el('span', { class: 'muted' }, 'No hosted page'));

    renderActions(inv);

    const ol = $('#timeline');
    ol.replaceChildren();
    for (const ev of history?.events ?? []) {
        let text;
        if (ev.source === 'stripe') {
            text = [`Stripe event ${ev.type}`, el('span', { class: 'muted' }, ` ${ev.id}`),
                    ev.changed ? '' : ' (changed nothing)'];
        } else {
            text = [`${ev.action} by ${ev.keyName}: ${ev.status}`,
                    ev.replayed ? ' (replayed)' : '',
                    ev.idempotencyKey
                        ? el('span', { class: 'muted' }, ` key ${ev.idempotencyKey}`) : ''];
        }
        ol.append(el('li', { dataset: { source: ev.source ?? '' } },
                     el('span', { class: 'when' }, formatTime(ev.at)), text));
    }
    if (!ol.children.length) {
        ol.append(el('li', { class: 'muted' }, 'Nothing recorded yet.'));
    }
    if (history?.has_more) {
        ol.append(el('li', { class: 'muted' }, 'Only the first entries are shown.'));
    }
    show(d);
}

function renderActions(inv) {
    const box = $('#actions');
    box.replaceChildren();
    if (state.scope === 'read') {
        box.append(el('p', { class: 'muted' }, 'A read key: no actions.'));
        return;
    }
    if (state.scope === 'nostripe') {
        box.append(el('p', { class: 'muted' },
                      'This server has no Stripe key: invoices cannot be acted on.'));
        return;
    }
    for (const a of ACTIONS) {
        const allowed = a.from.includes(inv.status);
        const button = el('button', {
            type: 'button',
            class: a.danger ? 'danger' : undefined,
            dataset: { action: a.name },
            disabled: !allowed || state.acting,
            on: { click: (ev) => act(inv, a, ev.currentTarget) },
        }, a.label);
        const reason = allowed ? null : el('span', { class: 'reason' },
            `needs ${a.from.join(' or ')}; this one is ${inv.status}`);
        if (reason) {
            button.title = reason.textContent;
        }
        box.append(el('div', { class: 'action' }, button, reason));
    }
}

function setActing(yes) {
    state.acting = yes;
    for (const b of document.querySelectorAll('#actions button')) {
        if (yes) {
            b.disabled = true;
        }
    }
}

// confirmDialog(text, {paymentMethod}) -> null (cancelled) or
// {paymentMethod: '...'}
function confirmDialog(text, opt = {}) {
    const dialog = $('#confirm');
    $('#confirm-text').textContent = text;
    const pm = $('#confirm-pm');
    show(pm, Boolean(opt.paymentMethod));
    pm.querySelector('input').value = '';
    return new Promise((resolve) => {
        const done = (ok) => {
            $('#confirm-ok').removeEventListener('click', onOk);
            $('#confirm-cancel').removeEventListener('click', onCancel);
            dialog.removeEventListener('cancel', onCancel);
            if (dialog.open) {
                dialog.close();
            }
            resolve(ok ? { paymentMethod: pm.querySelector('input').value.trim() } : null);
        };
        const onOk = () => done(true);
        const onCancel = () => done(false);
        $('#confirm-ok').addEventListener('click', onOk);
        $('#confirm-cancel').addEventListener('click', onCancel);
        dialog.addEventListener('cancel', onCancel);
        dialog.showModal();
    });
}

async function act(inv, a, button) {
    if (state.acting || button.disabled) {
        return;
    }
    const name = inv.number || inv.invoiceId;
    const answer = await confirmDialog(`${a.label} invoice ${name}?`,
                                       { paymentMethod: a.name === 'pay' });
    if (!answer || state.acting) {
        return;
    }
    // one key for this confirmed action: whatever happens to the request,
    // Stripe and the API see it once
    const idem = newIdempotencyKey();
    setActing(true);
    clearMessages();
    const path = a.method === 'DELETE'
        ? `/${encodeURIComponent(inv._id)}`
        : `/${encodeURIComponent(inv._id)}/${a.name}`;
    const json = a.name === 'pay' && answer.paymentMethod
        ? { paymentMethod: answer.paymentMethod } : undefined;
    let ok = false;
    try {
        const res = await api(a.method || 'POST', path, { idem, json });
        ok = true;
        notice(a.method === 'DELETE'
            ? `Deleted draft ${res?.invoiceId ?? name}.`
            : `${a.label}: ${res?.id ?? name} is now ${res?.status ?? 'changed'}.`);
    } catch (err) {
        showError(err);
    } finally {
        setActing(false);
    }
    if (ok && a.method === 'DELETE') {
        closeInvoice();
    } else {
        await openInvoice(inv._id);
    }
    await Promise.all([loadPage(), loadTotals()]);
}

//----------------------------------------------------------------------
// creating an invoice

// a line's Remove: the form keeps at least one line
function removeItem(ev) {
    if ($('#items').querySelectorAll('.item').length > 1) {
        ev.currentTarget.closest('.item').remove();
    }
}

function addItem() {
    const items = $('#items');
    const row = el('div', { class: 'item' },
        el('input', { name: 'item-name', placeholder: 'line text', required: true,
                      attrs: { 'aria-label': 'line text' } }),
        el('input', { name: 'item-amount', type: 'number', min: '1', step: '1',
                      placeholder: 'cents', required: true,
                      attrs: { 'aria-label': 'amount in cents' } }),
        el('button', { type: 'button', class: 'remove', on: { click: removeItem } },
           'Remove'));
    items.append(row);
}

async function createInvoice(ev) {
    ev.preventDefault();
    const f = $('#create-form');
    const submit = $('#create-submit');
    if (submit.disabled) {
        return;
    }
    const body = { customer: f.elements.customer.value.trim(), items: [] };
    for (const row of f.querySelectorAll('.item')) {
        body.items.push({
            name: row.querySelector('[name=item-name]').value.trim(),
            amount: Number(row.querySelector('[name=item-amount]').value),
        });
    }
    for (const k of ['currency', 'paymentMethod', 'description']) {
        const v = f.elements[k].value.trim();
        if (v) {
            body[k] = v;
        }
    }
    const total = body.items.reduce((s, i) => s + (i.amount || 0), 0);
    const answer = await confirmDialog(
        `Create, finalize and charge an invoice of ${money(total, body.currency || 'eur')} `
        + `to ${body.customer}?`);
    if (!answer) {
        return;
    }
    const idem = newIdempotencyKey();
    submit.disabled = true;
    clearMessages();
    try {
        const res = await api('POST', '', { json: body, idem });
        notice(`Created ${res?.id ?? 'the invoice'} (${res?.status ?? 'open'}).`);
        f.reset();
        $('#items').querySelectorAll('.item').forEach((r, i) => i && r.remove());
        state.cursor = null;
        state.offset = 0;
        await Promise.all([loadPage(), loadTotals()]);
    } catch (err) {
        showError(err);
    } finally {
        submit.disabled = false;
    }
}

//----------------------------------------------------------------------
// the export: fetched with the key in its header, saved from a Blob (the
// key never goes into a URL)

async function exportAs(format, button) {
    const p = new URLSearchParams(state.filters);
    p.set('format', format);
    button.disabled = true;
    clearMessages();
    try {
        const res = await api('GET', '/export', { params: p, raw: true });
        const blob = await res.blob();
        const cd = res.headers.get('Content-Disposition') || '';
        const m = /filename="([^"]+)"/.exec(cd);
        const name = m ? m[1] : `invoices.${format === 'csv' ? 'csv' : 'ndjson'}`;
        const url = URL.createObjectURL(blob);
        const a = el('a', { href: url, download: name, hidden: true });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
        showError(err);
    } finally {
        button.disabled = false;
    }
}

//----------------------------------------------------------------------
// wiring

function start() {
    $('#key-form').addEventListener('submit', (ev) => {
        ev.preventDefault();
        const key = $('#key-input').value.trim();
        $('#key-input').value = '';
        if (key) {
            useKey(key);
        }
    });
    $('#forget-key').addEventListener('click', () => askForKey('', true));
    $('#filters').addEventListener('submit', (ev) => {
        ev.preventDefault();
        clearMessages();
        applyFilters();
    });
    $('#filters').addEventListener('reset', () => {
        // after the browser cleared the fields
        setTimeout(() => { clearMessages(); applyFilters(); }, 0);
    });
    $('#next').addEventListener('click', () => loadPage('next'));
    $('#prev').addEventListener('click', () => loadPage('prev'));
    $('#export-csv').addEventListener('click', (ev) => exportAs('csv', ev.currentTarget));
    $('#export-ndjson').addEventListener('click',
                                         (ev) => exportAs('ndjson', ev.currentTarget));
    $('#detail-close').addEventListener('click', closeInvoice);
    $('#add-item').addEventListener('click', addItem);
    $('#create-form').addEventListener('submit', createInvoice);
    addItem();

    const key = sessionStorage.getItem(KEY_ITEM);
    if (key) {
        useKey(key);
    } else {
        askForKey('', false);
    }
}

start();
