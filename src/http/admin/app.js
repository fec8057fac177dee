// bookengine SuperAdmin page.
//
// Plain browser JavaScript, no dependencies. It calls only this service's /v1 API
// with the access token pasted at sign-in, so Row Level Security decides what it
// shows and what it may change: the page itself holds no privilege.

const TOKEN_KEY = 'bookengine.admin.token';
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const FINISHED = new Set(['succeeded', 'failed', 'cancelled']);
// SSE events carrying a row of the job's text (generation_deltas; `id:` = its seq).
const ROW_KINDS = new Set(['attempt', 'delta', 'discard', 'restart']);
const REFRESH_MS = 2000;

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  claims: null,
  tab: 'engines',
  engines: [],
  assignments: [],
  jobs: [],
  summaries: new Map(), // job id -> {status, updated_at, models, segments}
  genTimer: null,
  genBusy: false,
  job: null, // {id, abort, detail, texts: Map('step:item' -> text so far), last: seq}
  bulk: null, // the previewed request, as JSON text
  versionsOf: null, // the engine whose versions are shown
  history: null, // its GET /v1/engines/{id}/versions
};

// ---------------------------------------------------------------- DOM helpers

/** Create an element: h('td', {class: 'x', text: 'y'}, child, ...). Never parses HTML. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'value' || key === 'checked' || key === 'disabled') el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** A <time>; `compact` shows only the time of day for today's dates. */
function when(iso, compact = false) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const today = d.toDateString() === new Date().toDateString();
  const text = compact && today
    ? d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' })
    : d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
  return h('time', { datetime: iso, title: d.toLocaleString() }, text);
}

function duration(ms) {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

const short = (id) => (id ? String(id).slice(0, 8) : '—');
const badge = (text, cls = text) => h('span', { class: `badge ${cls}` }, text);
const tokens = (u) => (u && (u.input_tokens || u.output_tokens)
  ? `${(u.input_tokens || 0).toLocaleString()} in · ${(u.output_tokens || 0).toLocaleString()} out`
  : '—');
const engineName = (id) => state.engines.find((e) => e.id === id)?.name ?? short(id);
const targetText = (a) => (a.assignment_type === 'tier' ? `tier ${a.tier}` : `user ${a.user_id}`);

function emptyRow(colspan, text) {
  return h('tr', {}, h('td', { colspan, class: 'empty' }, text));
}

// ---------------------------------------------------------------- messages

class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** Plain-words advice by HTTP status, shown after the API's own message. */
function advice(err) {
  switch (err.status) {
    case 0: return 'Check that the bookengine service is running and reachable.';
    case 401: return 'Your token was not accepted: sign out and sign in again with a valid, unexpired token.';
    case 403: return "The signed-in user is not allowed to do this: admin actions need an admin's token.";
    case 404: return 'It may have been deleted, or this token cannot see it.';
    case 409: return 'Someone else changed it meanwhile: refresh and try again.';
    case 413: return 'The request is too large.';
    case 429: return 'Too many requests: wait a moment and try again.';
    default: return err.status >= 500 ? 'The service or its database had a problem: try again, and tell an operator if it persists.' : '';
  }
}

function sentence(text) {
  const t = String(text || 'something went wrong').trim();
  return t.charAt(0).toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? '' : '.');
}

/** Show an error in the assertive live region: what failed, the API's message, advice and code. */
function showError(action, err) {
  const box = $('error');
  const code = err.code || 'error';
  const key = `${action}|${code}|${err.message}`;
  if (box.dataset.key === key && box.childElementCount) return; // don't re-announce a repeating failure
  box.dataset.key = key;
  box.dataset.code = code;
  say('');
  box.replaceChildren(
    h('div', { class: 'text' },
      h('strong', {}, `${action} failed. `),
      sentence(err.message), ' ',
      advice(err), ' ',
      h('span', { class: 'muted' }, 'Error code: '), h('span', { class: 'code' }, code)),
    h('button', { type: 'button', class: 'secondary small', onclick: clearError }, 'Dismiss'),
  );
}

function clearError() {
  const box = $('error');
  box.replaceChildren();
  delete box.dataset.key;
  delete box.dataset.code;
}

let sayTimer = null;

/** A success or progress note in the polite live region; it fades after a while. */
function say(text) {
  clearTimeout(sayTimer);
  $('status').textContent = text;
  if (text) sayTimer = setTimeout(() => { $('status').textContent = ''; }, 12_000);
}

// ---------------------------------------------------------------- API

async function api(method, path, body) {
  const headers = { Accept: 'application/json', Authorization: `Bearer ${state.token}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network_error', `could not reach the service (${e.message})`);
  }
  if (resp.status === 204) return null;
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) throw toApiError(resp, data, text);
  return data;
}

function toApiError(resp, data, text) {
  const e = data && data.error;
  return new ApiError(
    resp.status,
    e?.code ?? `http_${resp.status}`,
    e?.message ?? (text ? text.slice(0, 300) : resp.statusText || `HTTP ${resp.status}`),
    e?.details,
  );
}

// ---------------------------------------------------------------- sign-in

function decodeJwt(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(b64.padEnd(Math.ceil(b64.length / 4) * 4, '='));
    const json = new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
    const claims = JSON.parse(json);
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

function signIn(raw) {
  const token = String(raw || '').trim().replace(/^bearer\s+/i, '');
  const claims = decodeJwt(token);
  if (!claims) {
    showError('Sign-in', new ApiError(400, 'invalid_token',
      'that does not look like an access token (a JWT is three base64url parts separated by dots)'));
    return false;
  }
  if (typeof claims.exp === 'number' && claims.exp * 1000 < Date.now()) {
    showError('Sign-in', new ApiError(401, 'invalid_token', `this token expired at ${new Date(claims.exp * 1000).toLocaleString()}`));
    return false;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  state.token = token;
  state.claims = claims;
  clearError();
  enterApp();
  return true;
}

function signOut() {
  stopJob();
  stopGenerations();
  sessionStorage.removeItem(TOKEN_KEY);
  Object.assign(state, { token: null, claims: null, engines: [], assignments: [], jobs: [], bulk: null });
  state.summaries.clear();
  for (const id of ['engines-table', 'assignments-table', 'gen-table', 'mine-table']) {
    $(id).querySelector('tbody').replaceChildren();
  }
  $('mine-table').hidden = true;
  $('mine-empty').hidden = true;
  $('bulk-preview-area').hidden = true;
  resetCheck();
  $('flow-input').value = '';
  $('flow-file').value = '';
  $('bulk-users').value = '';
  $('app').hidden = true;
  $('who').hidden = true;
  $('signin').hidden = false;
  $('token-input').value = '';
  say('Signed out.');
  loadDevUsers();
  $('token-input').focus();
}

function whoText() {
  const c = state.claims || {};
  return c.email || c.sub || 'unknown user';
}

function enterApp() {
  $('signin').hidden = true;
  $('app').hidden = false;
  $('who').hidden = false;
  $('who-name').textContent = whoText();
  $('who-name').title = state.claims?.sub ?? '';
  const exp = state.claims?.exp;
  $('who-expiry').textContent = typeof exp === 'number' ? `token valid until ${new Date(exp * 1000).toLocaleTimeString()}` : '';
  $('mine-user').textContent = whoText();
  followHash(true);
  say(`Signed in as ${whoText()}.`);
}

/** `#engines`, `#assignments`, `#generations`, or `#generations/<job id>` to follow a job. */
function followHash(always = false) {
  if (!state.token) return;
  const [name, id] = (location.hash || '').replace(/^#/, '').split('/');
  const tab = TAB_NAMES.includes(name) ? name : 'engines';
  if (always || tab !== state.tab) selectTab(tab, false);
  if (tab === 'generations' && id && UUID_RE.test(id) && state.job?.id !== id) openJob(id);
}

async function loadDevUsers() {
  const section = $('dev-users');
  section.hidden = true;
  let users;
  try {
    const resp = await fetch('/admin/dev-users', { headers: { Accept: 'application/json' } });
    if (!resp.ok) return; // 404 everywhere but the local demo stack
    users = await resp.json();
  } catch {
    return;
  }
  if (!Array.isArray(users) || users.length === 0) return;
  $('dev-users-list').replaceChildren(...users.map((u) => h('li', {},
    h('button', {
      type: 'button', class: 'secondary', title: u.user_id,
      onclick: () => signIn(u.token),
    }, `Sign in as ${u.label}`))));
  section.hidden = false;
}

// ---------------------------------------------------------------- tabs

const TAB_NAMES = ['engines', 'assignments', 'generations'];

function selectTab(name, focus = true) {
  const changed = state.tab !== name;
  state.tab = name;
  for (const t of TAB_NAMES) {
    const tab = $(`tab-${t}`);
    const on = t === name;
    tab.setAttribute('aria-selected', String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`panel-${t}`).hidden = !on;
  }
  if (focus) $(`tab-${name}`).focus();
  if (changed) say('');
  history.replaceState(null, '', `#${name}`);
  if (name === 'generations') startGenerations(); else stopGenerations();
  if (name === 'engines') refreshEngines();
  if (name === 'assignments') refreshAssignments();
}

function onTabKey(event) {
  const i = TAB_NAMES.indexOf(state.tab);
  let next = null;
  if (event.key === 'ArrowRight') next = TAB_NAMES[(i + 1) % TAB_NAMES.length];
  else if (event.key === 'ArrowLeft') next = TAB_NAMES[(i + TAB_NAMES.length - 1) % TAB_NAMES.length];
  else if (event.key === 'Home') next = TAB_NAMES[0];
  else if (event.key === 'End') next = TAB_NAMES[TAB_NAMES.length - 1];
  if (next) {
    event.preventDefault();
    selectTab(next, true);
  }
}

// ---------------------------------------------------------------- confirmation dialog

/** A modal <dialog>; resolves true when confirmed, false on Cancel or Escape. */
function confirmDialog({ title, text, ok = 'Delete', cancel = 'Cancel' }) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = ok;
  $('confirm-cancel').textContent = cancel;
  const opener = document.activeElement;
  return new Promise((resolve) => {
    let settled = false;
    const finish = (value) => {
      if (settled) return;
      settled = true;
      $('confirm-ok').removeEventListener('click', onOk);
      $('confirm-cancel').removeEventListener('click', onCancel);
      dialog.removeEventListener('close', onCancel);
      if (dialog.open) dialog.close();
      if (opener && opener.isConnected) opener.focus();
      resolve(value);
    };
    const onOk = () => finish(true);
    const onCancel = () => finish(false);
    $('confirm-ok').addEventListener('click', onOk);
    $('confirm-cancel').addEventListener('click', onCancel);
    dialog.addEventListener('close', onCancel); // Escape
    dialog.showModal();
    $('confirm-cancel').focus();
  });
}

// ---------------------------------------------------------------- engines

async function refreshEngines() {
  try {
    state.engines = await api('GET', '/v1/engines');
  } catch (e) {
    showError('Loading engines', e);
    if (e.status === 401) renderEngines();
    return;
  }
  renderEngines();
  renderEngineChoices();
}

function modelChips(models) {
  if (!Array.isArray(models) || models.length === 0) return '—';
  return h('div', { class: 'chips' }, models.map((m) => {
    const steps = Array.isArray(m.steps) ? m.steps.join(', ') : '';
    const role = m.fallback_for && m.fallback_for.length ? `fallback for ${[].concat(m.fallback_for).join(', ')}` : steps;
    return h('span', { class: 'chip', title: role }, `${m.provider}/${m.model}`, role ? h('span', { class: 'role' }, ` · ${role}`) : null);
  }));
}

/**
 * The service's check of an engine (engine_checks): whether it can run, why not
 * (each issue with its path), and how the React app's spellings were read.
 */
function engineCheck(check) {
  if (!check) return null;
  const label = { runnable: ['runnable', 'ok'], not_runnable: ['not runnable', 'failed'], pending: ['checking…', 'pending'] }[check.state]
    ?? [check.state, 'pending'];
  const issues = Array.isArray(check.issues) ? check.issues : [];
  const notes = Array.isArray(check.notes) ? check.notes : [];
  return h('div', { class: 'engine-check' },
    badge(label[0], label[1]),
    issues.length ? h('ul', { class: 'issues', 'aria-label': 'Why this engine cannot run' },
      ...issues.map((i) => h('li', {}, i.path ? h('code', {}, i.path) : null, i.path ? ': ' : '', i.message ?? i.code))) : null,
    notes.length ? h('details', {},
      h('summary', {}, `${notes.length} normalisation${notes.length === 1 ? '' : 's'}`),
      h('ul', {}, ...notes.map((n) => h('li', {}, h('code', {}, n.path), ': ', h('code', {}, n.from), ' read as ', h('code', {}, n.to))))) : null);
}

function renderEngines() {
  const body = $('engines-table').querySelector('tbody');
  if (state.engines.length === 0) {
    body.replaceChildren(emptyRow(7, 'No engines yet (or this token cannot see any). Deploy a flow below.'));
    return;
  }
  body.replaceChildren(...state.engines.map((e) => h('tr', { dataset: { engineId: e.id } },
    h('td', {}, h('strong', {}, e.name), e.description ? h('div', { class: 'muted' }, e.description) : null,
      h('div', { class: 'muted mono', title: 'engine id' }, e.id), engineCheck(e.check)),
    h('td', {}, e.tier ? badge(e.tier, 'tier') : '—'),
    h('td', {}, e.execution_mode || 'sequential'),
    h('td', {}, modelChips(e.models)),
    h('td', {}, h('button', {
      type: 'button', role: 'switch', class: e.active ? 'small' : 'small secondary',
      'aria-checked': String(!!e.active), 'aria-label': `Active: ${e.name}`,
      onclick: () => toggleEngine(e),
    }, e.active ? 'Active' : 'Inactive')),
    h('td', {}, when(e.created_at)),
    h('td', {}, h('button', {
      type: 'button', class: 'small secondary', 'aria-label': `Versions of ${e.name}`,
      onclick: () => openVersions(e),
    }, 'Versions'), ' ', h('button', {
      type: 'button', class: 'small link-danger', 'aria-label': `Delete engine ${e.name}`,
      onclick: () => deleteEngine(e),
    }, 'Delete')),
  )));
}

// Versions ----------------------------------------------------------

const pct = (x) => (x == null ? '—' : `${Math.round(x * 100)} %`);
const msText = (x) => (x == null ? '—' : duration(Math.round(x)));

async function openVersions(engine) {
  state.versionsOf = engine;
  $('versions').hidden = false;
  $('versions-title').textContent = `Versions of "${engine.name}"`;
  $('diff-result').replaceChildren();
  await refreshVersions();
  $('versions-title').scrollIntoView({ block: 'nearest' });
}

function closeVersions() {
  state.versionsOf = null;
  $('versions').hidden = true;
}

async function refreshVersions() {
  const engine = state.versionsOf;
  if (!engine) return;
  let history;
  try {
    history = await api('GET', `/v1/engines/${engine.id}/versions`);
  } catch (e) {
    showError('Loading the versions', e);
    return;
  }
  state.history = history;
  renderVersions(history);
}

function renderRollout(history) {
  const r = history.rollout;
  $('rollout-state').textContent = r
    ? `Current version ${history.current_version}. Version ${r.version} is rolled out to ${r.percent} % of this engine's users (since ${r.started_at ? new Date(r.started_at).toLocaleString() : '—'}).`
    : `Current version ${history.current_version}. No rollout.`;
  const actions = [];
  if (r) {
    const share = h('input', { type: 'number', min: '0', max: '100', step: '1', value: String(r.percent), id: 'rollout-share', 'aria-label': 'Share of users on the candidate (percent)' });
    actions.push(share,
      h('button', { type: 'button', class: 'small secondary', onclick: () => startRollout(r.version, Number(share.value)) }, 'Change share'),
      h('button', { type: 'button', class: 'small', onclick: promoteRollout }, `Promote version ${r.version}`),
      h('button', { type: 'button', class: 'small link-danger', onclick: abortRollout }, 'Abort rollout'));
  }
  $('rollout-actions').replaceChildren(...actions);
}

function renderVersions(history) {
  renderRollout(history);
  const versions = Array.isArray(history.versions) ? history.versions : [];
  const body = $('versions-table').querySelector('tbody');
  body.replaceChildren(...versions.map((v) => {
    const s = v.stats || {};
    const mark = v.current ? badge('current', 'ok') : v.candidate ? badge('candidate', 'pending') : null;
    const origin = v.restored_from ? `${v.origin} of ${v.restored_from}` : v.origin;
    const check = { runnable: ['runnable', 'ok'], not_runnable: ['not runnable', 'failed'], pending: ['checking…', 'pending'] }[v.check_state] ?? [v.check_state, 'pending'];
    const actions = [];
    if (!v.current && v.check_state !== 'not_runnable') {
      actions.push(h('button', { type: 'button', class: 'small secondary', onclick: () => rollbackTo(v) }, 'Roll back to this'));
      if (!history.rollout || history.rollout.version === v.version) {
        actions.push(' ', h('button', { type: 'button', class: 'small secondary', onclick: () => startRollout(v.version, 10) }, 'Roll out to 10 %'));
      }
    }
    return h('tr', { dataset: { version: String(v.version) } },
      h('td', {}, h('strong', {}, String(v.version)), ' ', mark),
      h('td', {}, origin),
      h('td', {}, badge(check[0], check[1])),
      h('td', {}, String(s.jobs ?? 0)),
      h('td', {}, pct(s.succeeded_share)),
      h('td', {}, pct(s.failed_share)),
      h('td', {}, msText(s.median_wall_ms)),
      h('td', {}, msText(s.p95_wall_ms)),
      h('td', {}, s.tokens_per_job == null ? '—' : String(Math.round(s.tokens_per_job))),
      h('td', {}, when(v.created_at)),
      h('td', {}, v.note || ''),
      h('td', {}, ...actions));
  }));
  const options = (selected) => versions.map((v) => h('option', { value: String(v.version), selected: v.version === selected }, `${v.version}${v.current ? ' (current)' : ''}`));
  const previous = versions.find((v) => !v.current)?.version;
  $('diff-from').replaceChildren(...options(previous));
  $('diff-to').replaceChildren(...options(history.current_version));
}

function changeText(value) {
  return value === null || value === undefined ? '—' : JSON.stringify(value);
}

async function showDiff(event) {
  event.preventDefault();
  const engine = state.versionsOf;
  if (!engine) return;
  const from = $('diff-from').value;
  const to = $('diff-to').value;
  let d;
  try {
    d = await api('GET', `/v1/engines/${engine.id}/versions/${from}/diff/${to}`);
  } catch (e) {
    showError('Comparing versions', e);
    return;
  }
  const field = (f) => h('li', {}, h('code', {}, f.field), ': ', h('del', {}, changeText(f.from)), ' → ', h('ins', {}, changeText(f.to)));
  const parts = [h('h4', {}, `Version ${d.from} → version ${d.to}`)];
  if (d.identical) parts.push(h('p', { class: 'muted' }, 'The two versions are identical.'));
  for (const id of d.added || []) parts.push(h('p', {}, badge('added', 'ok'), ' step ', h('code', {}, id)));
  for (const id of d.removed || []) parts.push(h('p', {}, badge('removed', 'failed'), ' step ', h('code', {}, id)));
  for (const c of d.changed || []) parts.push(h('div', {}, h('p', {}, badge('changed', 'pending'), ' step ', h('code', {}, c.id)), h('ul', {}, ...c.fields.map(field))));
  const flow = [...(d.order ? [d.order] : []), ...(d.flow || [])];
  if (flow.length) parts.push(h('div', {}, h('p', {}, 'Flow'), h('ul', {}, ...flow.map(field))));
  $('diff-result').replaceChildren(...parts);
}

async function rollbackTo(v) {
  const engine = state.versionsOf;
  const ok = await confirmDialog({
    title: 'Roll back?',
    text: `Make version ${v.version} of "${engine.name}" current again? It becomes a new version; generations already requested keep the version they started with.`,
    ok: `Roll back to version ${v.version}`,
  });
  if (!ok) return;
  try {
    const created = await api('POST', `/v1/engines/${engine.id}/rollback`, { version: v.version });
    say(`Version ${created.version} is current: it restores version ${v.version}.`);
    await refreshVersions();
    await refreshEngines();
  } catch (e) {
    showError('Rolling back', e);
  }
}

async function startRollout(version, percent) {
  const engine = state.versionsOf;
  try {
    const r = await api('POST', `/v1/engines/${engine.id}/rollout`, { version, percent });
    say(`Version ${r.rollout?.version ?? version} is rolled out to ${r.rollout?.percent ?? percent} % of the users.`);
    await refreshVersions();
  } catch (e) {
    showError('Starting the rollout', e);
  }
}

async function promoteRollout() {
  const engine = state.versionsOf;
  const version = state.history?.rollout?.version;
  const ok = await confirmDialog({
    title: 'Promote?',
    text: `Make version ${version} current for every user of "${engine.name}"?`,
    ok: `Promote version ${version}`,
  });
  if (!ok) return;
  try {
    const r = await api('POST', `/v1/engines/${engine.id}/rollout/promote`, {});
    say(`Version ${r.current_version} is current for everyone.`);
    await refreshVersions();
    await refreshEngines();
  } catch (e) {
    showError('Promoting the rollout', e);
  }
}

async function abortRollout() {
  const engine = state.versionsOf;
  try {
    await api('POST', `/v1/engines/${engine.id}/rollout/abort`, {});
    say('Rollout aborted: every user is on the current version.');
    await refreshVersions();
  } catch (e) {
    showError('Aborting the rollout', e);
  }
}

async function toggleEngine(engine) {
  try {
    const updated = await api('PATCH', `/v1/engines/${engine.id}`, { active: !engine.active });
    state.engines = state.engines.map((e) => (e.id === updated.id ? updated : e));
    renderEngines();
    say(`Engine "${updated.name}" is now ${updated.active ? 'active' : 'inactive'}.`);
    document.querySelector(`tr[data-engine-id="${updated.id}"] [role="switch"]`)?.focus();
  } catch (e) {
    showError(engine.active ? 'Deactivating the engine' : 'Activating the engine', e);
  }
}

async function deleteEngine(engine) {
  const ok = await confirmDialog({
    title: 'Delete engine?',
    text: `Delete "${engine.name}"? Its assignments are removed with it. Generations already requested keep their own copy of the flow.`,
    ok: 'Delete engine',
  });
  if (!ok) return;
  try {
    await api('DELETE', `/v1/engines/${engine.id}`);
    say(`Engine "${engine.name}" deleted.`);
    await refreshEngines();
    $('engines-refresh').focus();
  } catch (e) {
    showError('Deleting the engine', e);
  }
}

// Deploy ------------------------------------------------------------

function resetCheck() {
  $('deploy-summary').textContent = 'Deploy to validate the document.';
  $('deploy-summary').className = 'muted';
  $('readiness').hidden = true;
  $('doc-issues').replaceChildren();
  $('flow-steps').replaceChildren();
  $('flow-input').removeAttribute('aria-invalid');
}

function issueItem(issue) {
  return h('li', { class: 'issue', dataset: { path: issue.path || '', code: issue.code || '' } },
    issue.path ? h('code', {}, issue.path) : null, issue.path ? ': ' : '',
    issue.message || issue.code, ' ', h('span', { class: 'muted' }, `(${issue.code})`));
}

/** Show the check result: readiness, document-level issues, and each step with its own issues. */
function renderCheck(doc, err, engine) {
  resetCheck();
  const issues = Array.isArray(err?.details?.issues) ? err.details.issues : [];
  const steps = Array.isArray(doc?.steps) ? doc.steps.slice(0, 200) : [];
  const byStep = new Map();
  const docIssues = [];
  for (const issue of issues) {
    let idx = -1;
    if (typeof issue.step_id === 'string') idx = steps.findIndex((s) => s && s.id === issue.step_id);
    if (idx < 0) {
      const m = /^steps\[(\d+)\]/.exec(issue.path || '');
      if (m && Number(m[1]) < steps.length) idx = Number(m[1]);
    }
    if (idx >= 0) {
      if (!byStep.has(idx)) byStep.set(idx, []);
      byStep.get(idx).push(issue);
    } else {
      docIssues.push(issue);
    }
  }
  const summary = $('deploy-summary');
  if (err) {
    summary.className = 'issue';
    summary.textContent = `Not deployed: ${sentence(err.message)} (${err.code})`;
    $('flow-input').setAttribute('aria-invalid', 'true');
  } else {
    summary.className = '';
    summary.textContent = `Deployed as engine "${engine.name}" (${engine.id}).`;
  }
  const readiness = err ? err.details?.readiness : 100;
  if (typeof readiness === 'number') {
    $('readiness').hidden = false;
    $('readiness-meter').value = readiness;
    $('readiness-text').textContent = readiness === 100
      ? '100% ready'
      : `${readiness}% ready: every step needs a provider, a model and a prompt`;
  }
  $('doc-issues').replaceChildren(...docIssues.map(issueItem));
  if (err?.details?.truncated) $('doc-issues').append(h('li', { class: 'issue' }, 'More problems were found than are listed here.'));
  // A refusal that is not about the document (permissions, size) has nothing to mark on the steps.
  if (err && issues.length === 0) return;
  $('flow-steps').replaceChildren(...steps.map((step, i) => {
    const own = byStep.get(i) || [];
    const conf = (step && typeof step.configuration === 'object' && step.configuration) || {};
    const id = step && typeof step.id === 'string' ? step.id : `(step ${i + 1})`;
    const model = conf.provider || conf.model ? `${conf.provider || '?'}/${conf.model || '?'}` : null;
    return h('li', { class: own.length ? 'has-issues' : 'ok', dataset: { stepId: id, stepIndex: String(i) } },
      h('div', { class: 'step-head' },
        h('strong', {}, id),
        step?.name && step.name !== id ? h('span', {}, step.name) : null,
        model ? h('span', { class: 'chip' }, model) : null,
        own.length ? badge(`${own.length} problem${own.length > 1 ? 's' : ''}`, 'failed') : badge(err ? 'no problems' : 'ready', 'ok')),
      own.length ? h('ul', { class: 'issues', 'aria-label': `Problems in step ${id}` }, own.map(issueItem)) : null);
  }));
}

async function deployFlow(event) {
  event.preventDefault();
  clearError();
  const text = $('flow-input').value.trim();
  if (!text) {
    resetCheck();
    showError('Deploy', new ApiError(400, 'invalid_json', 'paste a flow document or choose a JSON file first'));
    $('flow-input').focus();
    return;
  }
  let doc;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    const err = new ApiError(400, 'invalid_json', `the flow document is not valid JSON (${e.message})`);
    renderCheck(null, err);
    showError('Deploy', err);
    return;
  }
  const button = $('deploy-button');
  button.disabled = true;
  try {
    const engine = await api('POST', '/v1/engines', doc);
    renderCheck(doc, null, engine);
    say(`Engine "${engine.name}" deployed.`);
    await refreshEngines();
  } catch (e) {
    renderCheck(doc, e);
    showError('Deploy', e);
  } finally {
    button.disabled = false;
  }
}

async function loadFlowFile() {
  const file = $('flow-file').files?.[0];
  if (!file) return;
  try {
    $('flow-input').value = await file.text();
    resetCheck();
    say(`Loaded ${file.name}; press Deploy to check and deploy it.`);
  } catch (e) {
    showError('Reading the file', new ApiError(400, 'unreadable_file', e.message));
  }
}

// ---------------------------------------------------------------- assignments

function renderEngineChoices() {
  const options = () => state.engines.map((e) => h('option', { value: e.id }, `${e.name}${e.active ? '' : ' (inactive)'}`));
  const keep = (select, first) => {
    const value = select.value;
    select.replaceChildren(...(first ? [first] : []), ...options());
    if ([...select.options].some((o) => o.value === value)) select.value = value;
  };
  keep($('add-engine'));
  keep($('assign-filter'), h('option', { value: '' }, 'All engines'));
  const checked = new Set([...document.querySelectorAll('#bulk-engines input:checked')].map((i) => i.value));
  $('bulk-engines').replaceChildren(...(state.engines.length
    ? state.engines.map((e) => h('label', {},
      h('input', { type: 'checkbox', name: 'bulk-engine', value: e.id, checked: checked.has(e.id) }), ` ${e.name}`))
    : [h('span', { class: 'muted' }, 'No engines.')]));
}

async function refreshAssignments() {
  try {
    const [engines, assignments] = await Promise.all([api('GET', '/v1/engines'), api('GET', '/v1/assignments')]);
    state.engines = engines;
    state.assignments = assignments;
  } catch (e) {
    showError('Loading assignments', e);
    return;
  }
  renderEngineChoices();
  renderAssignments();
}

function sortAssignments(list) {
  return [...list].sort((a, b) => engineName(a.engine_id).localeCompare(engineName(b.engine_id))
    || (a.assignment_type === b.assignment_type ? 0 : a.assignment_type === 'user' ? -1 : 1)
    || (b.priority ?? 0) - (a.priority ?? 0)
    || String(a.tier ?? a.user_id).localeCompare(String(b.tier ?? b.user_id)));
}

function renderAssignments() {
  const filter = $('assign-filter').value;
  const rows = sortAssignments(state.assignments.filter((a) => !filter || a.engine_id === filter));
  const body = $('assignments-table').querySelector('tbody');
  if (rows.length === 0) {
    body.replaceChildren(emptyRow(6, filter ? 'This engine is not assigned to anyone yet.' : 'No assignments yet.'));
    return;
  }
  body.replaceChildren(...rows.map((a) => {
    const name = engineName(a.engine_id);
    const what = `${name} for ${targetText(a)}`;
    const input = h('input', {
      type: 'number', step: '1', value: String(a.priority ?? 0), 'aria-label': `Priority of ${what}`,
      class: 'priority-input',
    });
    const save = h('button', {
      type: 'button', class: 'small secondary', disabled: true, 'aria-label': `Save priority of ${what}`,
      onclick: () => savePriority(a, input),
    }, 'Save');
    input.addEventListener('input', () => { save.disabled = input.value === String(a.priority ?? 0); });
    input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter') { ev.preventDefault(); if (!save.disabled) savePriority(a, input); }
    });
    return h('tr', { dataset: { assignmentId: a.id, target: a.assignment_type === 'tier' ? `tier:${a.tier}` : `user:${a.user_id}`, engineId: a.engine_id ?? '' } },
      h('td', {}, name),
      h('td', {}, badge(a.assignment_type, 'tier'), ' ',
        a.assignment_type === 'tier' ? h('strong', {}, a.tier) : h('span', { class: 'mono' }, a.user_id)),
      h('td', {}, h('div', { class: 'priority-edit' }, input, save)),
      h('td', {}, h('button', {
        type: 'button', role: 'switch', class: a.active ? 'small' : 'small secondary',
        'aria-checked': String(!!a.active), 'aria-label': `Active: ${what}`,
        onclick: () => patchAssignment(a, { active: !a.active }, `Assignment of ${what} is now ${a.active ? 'inactive' : 'active'}.`),
      }, a.active ? 'Active' : 'Inactive')),
      h('td', {}, when(a.created_at)),
      h('td', {}, h('button', {
        type: 'button', class: 'small link-danger', 'aria-label': `Remove assignment of ${what}`,
        onclick: () => removeAssignment(a, what),
      }, 'Remove')));
  }));
}

async function savePriority(a, input) {
  const value = Number(input.value);
  if (input.value.trim() === '' || !Number.isInteger(value)) {
    showError('Saving the priority', new ApiError(400, 'invalid_assignment', 'the priority must be a whole number'));
    input.focus();
    return;
  }
  await patchAssignment(a, { priority: value }, `Priority of ${engineName(a.engine_id)} for ${targetText(a)} is now ${value}.`);
}

async function patchAssignment(a, patch, message) {
  try {
    const updated = await api('PATCH', `/v1/assignments/${a.id}`, patch);
    state.assignments = state.assignments.map((x) => (x.id === updated.id ? updated : x));
    renderAssignments();
    say(message);
    clearError();
  } catch (e) {
    showError('Changing the assignment', e);
  }
}

async function removeAssignment(a, what) {
  const ok = await confirmDialog({ title: 'Remove assignment?', text: `Stop assigning ${what}?`, ok: 'Remove' });
  if (!ok) return;
  try {
    await api('DELETE', `/v1/assignments/${a.id}`);
    say(`Assignment of ${what} removed.`);
    await refreshAssignments();
  } catch (e) {
    showError('Removing the assignment', e);
  }
}

function onAddKind() {
  const user = $('add-kind').value === 'user';
  $('add-tier').hidden = user;
  $('add-tier-label').hidden = user;
  $('add-user').hidden = !user;
  $('add-user-label').hidden = !user;
}

async function addAssignment(event) {
  event.preventDefault();
  const engineId = $('add-engine').value;
  const priority = Number($('add-priority').value || 0);
  if (!engineId) return showError('Assigning', new ApiError(400, 'invalid_assignment', 'choose an engine first (deploy one on the Engines tab)'));
  if (!Number.isInteger(priority)) return showError('Assigning', new ApiError(400, 'invalid_assignment', 'the priority must be a whole number'));
  const body = { engine_id: engineId, priority };
  if ($('add-kind').value === 'user') {
    const user = $('add-user').value.trim();
    if (!UUID_RE.test(user)) {
      $('add-user').focus();
      return showError('Assigning', new ApiError(400, 'invalid_assignment', `"${user}" is not a user id (a UUID like 00000000-0000-0000-0000-000000000000)`));
    }
    body.user_id = user;
  } else {
    body.tier = $('add-tier').value;
  }
  try {
    const a = await api('POST', '/v1/assignments', body);
    say(`${engineName(a.engine_id)} is assigned to ${targetText(a)} with priority ${a.priority ?? 0}.`);
    clearError();
    await refreshAssignments();
  } catch (e) {
    showError('Assigning', e);
  }
}

// Bulk ---------------------------------------------------------------

function bulkRequest() {
  const engineIds = [...document.querySelectorAll('#bulk-engines input:checked')].map((i) => i.value);
  const tiers = [...document.querySelectorAll('input[name="bulk-tier"]:checked')].map((i) => i.value);
  const users = $('bulk-users').value.split(/[\s,;]+/).map((s) => s.trim()).filter(Boolean);
  const raw = $('bulk-priority').value.trim();
  const priority = raw === '' ? 0 : Number(raw);
  const bad = users.filter((u) => !UUID_RE.test(u));
  if (engineIds.length === 0) throw new ApiError(400, 'invalid_assignment', 'choose at least one engine');
  if (tiers.length === 0 && users.length === 0) throw new ApiError(400, 'invalid_assignment', 'choose at least one tier or enter at least one user id');
  if (bad.length) throw new ApiError(400, 'invalid_assignment', `these are not user ids (UUIDs): ${bad.join(', ')}`);
  if (!Number.isInteger(priority)) throw new ApiError(400, 'invalid_assignment', 'the priority must be a whole number');
  return { engine_ids: engineIds, tiers, user_ids: [...new Set(users.map((u) => u.toLowerCase()))], priority, active: true };
}

function invalidateBulk() {
  state.bulk = null;
  $('bulk-submit').disabled = true;
  $('bulk-preview-area').hidden = true;
}

function previewBulk() {
  let req;
  try {
    req = bulkRequest();
  } catch (e) {
    invalidateBulk();
    showError('Preview', e);
    return;
  }
  clearError();
  const rows = [];
  const counts = { create: 0, update: 0, unchanged: 0 };
  for (const engineId of req.engine_ids) {
    const targets = [...req.tiers.map((t) => ({ kind: 'tier', value: t })), ...req.user_ids.map((u) => ({ kind: 'user', value: u }))];
    for (const t of targets) {
      const existing = state.assignments.find((a) => a.engine_id === engineId && a.assignment_type === t.kind
        && (t.kind === 'tier' ? a.tier === t.value : String(a.user_id).toLowerCase() === t.value));
      let change = 'create';
      let detail = 'new assignment';
      if (existing) {
        const same = (existing.priority ?? 0) === req.priority && existing.active;
        change = same ? 'unchanged' : 'update';
        detail = same ? 'already assigned like this'
          : [existing.priority !== req.priority ? `priority ${existing.priority ?? 0} → ${req.priority}` : null,
            existing.active ? null : 'reactivated'].filter(Boolean).join(', ');
      }
      counts[change] += 1;
      rows.push(h('tr', { dataset: { change } },
        h('td', {}, engineName(engineId)),
        h('td', {}, badge(t.kind, 'tier'), ' ', t.kind === 'tier' ? h('strong', {}, t.value) : h('span', { class: 'mono' }, t.value)),
        h('td', {}, badge(change), ' ', h('span', { class: 'muted' }, detail)),
        h('td', {}, String(req.priority))));
    }
  }
  $('bulk-preview-table').querySelector('tbody').replaceChildren(...rows);
  $('bulk-preview-caption').textContent = `What will be written: ${counts.create} to create, ${counts.update} to update, ${counts.unchanged} unchanged (${rows.length} in all, all or nothing)`;
  $('bulk-preview-area').hidden = false;
  $('bulk-preview-area').scrollIntoView({ block: 'nearest' });
  state.bulk = JSON.stringify(req);
  $('bulk-submit').disabled = false;
  $('bulk-submit').textContent = `Assign ${rows.length}`;
  say(`Preview ready: ${counts.create} to create, ${counts.update} to update, ${counts.unchanged} unchanged.`);
}

async function submitBulk(event) {
  event.preventDefault();
  let req;
  try {
    req = bulkRequest();
  } catch (e) {
    showError('Bulk assign', e);
    return;
  }
  if (!state.bulk || state.bulk !== JSON.stringify(req)) {
    invalidateBulk();
    showError('Bulk assign', new ApiError(400, 'preview_needed', 'the choices changed since the preview: press Preview again'));
    return;
  }
  $('bulk-submit').disabled = true;
  try {
    const written = await api('POST', '/v1/assignments/bulk', req);
    invalidateBulk();
    $('bulk-submit').textContent = 'Assign';
    say(`${written.length} assignment${written.length === 1 ? '' : 's'} written.`);
    clearError();
    await refreshAssignments();
  } catch (e) {
    $('bulk-submit').disabled = false;
    showError('Bulk assign', e);
  }
}

// Who gets which engine ---------------------------------------------------

async function loadMine() {
  const table = $('mine-table');
  const empty = $('mine-empty');
  try {
    const list = await api('GET', '/v1/me/engines');
    const body = table.querySelector('tbody');
    // Resolution skips an engine the service found broken (runnable === false).
    const used = list.find((c) => c.runnable !== false);
    body.replaceChildren(...list.map((c) => h('tr', { dataset: { engineId: c.id } },
      h('td', {}, String(c.rank), c === used ? h('span', {}, ' ', badge('default', 'ok')) : null,
        c.runnable === false ? h('span', {}, ' ', badge('skipped: not runnable', 'failed')) : null),
      h('td', {}, c.name),
      h('td', {}, c.assignment_type === 'user' ? 'assigned to the user directly' : "the user's tier"),
      h('td', {}, String(c.assignment_priority ?? 0)))));
    table.hidden = list.length === 0;
    empty.hidden = list.length !== 0;
    empty.textContent = list.length ? '' : `No engine is assigned to ${whoText()}: a generation request would fail with no_engine_assigned.`;
    say(`Resolution order for ${whoText()}: ${list.length} engine${list.length === 1 ? '' : 's'}.`);
  } catch (e) {
    showError('Loading the resolution order', e);
  }
}

// ---------------------------------------------------------------- generations

function startGenerations() {
  stopGenerations();
  const tick = async () => {
    await refreshGenerations();
    if (state.tab === 'generations' && state.token && $('gen-live').checked) {
      state.genTimer = setTimeout(tick, REFRESH_MS);
    }
  };
  tick();
}

function stopGenerations() {
  clearTimeout(state.genTimer);
  state.genTimer = null;
}

function summarize(detail) {
  const steps = Array.isArray(detail.steps) ? detail.steps : [];
  // A fan-out's own row only sums up its items: count the items instead.
  const fanOuts = new Set(steps.filter((s) => s.item_index >= 0).map((s) => s.step_id));
  const counted = steps.filter((s) => s.item_index >= 0 || !fanOuts.has(s.step_id));
  const models = new Map();
  for (const s of counted) {
    if (!s.provider && !s.model) continue;
    const key = `${s.provider ?? '?'}/${s.model ?? '?'}`;
    models.set(key, (models.get(key) || false) || !!s.fallback_used);
  }
  return {
    status: detail.status,
    updated_at: detail.updated_at,
    models: [...models].map(([name, fallback]) => ({ name, fallback })),
    segments: counted.map((s) => ({ label: `${s.step_id}${s.item_index >= 0 ? ` item ${s.item_index + 1}` : ''}`, status: s.status })),
  };
}

/** Details for jobs whose summary is missing or stale (running jobs every time), 4 at a time. */
async function loadSummaries(jobs) {
  const wanted = jobs.filter((j) => {
    const s = state.summaries.get(j.id);
    return !s || !FINISHED.has(s.status) || s.updated_at !== j.updated_at;
  });
  const queue = [...wanted];
  const worker = async () => {
    while (queue.length) {
      const job = queue.shift();
      try {
        state.summaries.set(job.id, summarize(await api('GET', `/v1/generations/${job.id}`)));
      } catch {
        // The list still shows the job; its summary comes on the next refresh.
      }
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
}

async function refreshGenerations() {
  if (state.genBusy || !state.token) return;
  state.genBusy = true;
  try {
    const params = new URLSearchParams({ limit: $('gen-limit').value });
    if ($('gen-status').value) params.set('status', $('gen-status').value);
    const jobs = await api('GET', `/v1/generations?${params}`);
    await loadSummaries(jobs);
    state.jobs = jobs;
    renderGenerations();
    $('gen-updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
    if ($('error').dataset.key?.startsWith('Loading generations|')) clearError();
  } catch (e) {
    showError('Loading generations', e);
    if (state.jobs.length === 0) $('gen-table').querySelector('tbody').replaceChildren(emptyRow(7, 'Could not load the generations (see the message above).'));
  } finally {
    state.genBusy = false;
  }
}

function progressCell(job, summary) {
  const p = job.progress || {};
  const done = Number(p.done) || 0;
  const total = Number(p.total) || 0;
  const label = total ? `${done} of ${total} done` : job.status === 'queued' ? 'waiting for a worker' : '—';
  return h('div', { class: 'progress' },
    total ? h('progress', { max: String(total), value: String(done), 'aria-label': `Progress of job ${short(job.id)}` }) : null,
    h('div', { class: 'progress-text' }, label, p.current && !FINISHED.has(job.status) ? ` · ${p.current}` : ''),
    summary?.segments?.length
      ? h('div', { class: 'segments', 'aria-hidden': 'true' }, summary.segments.map((s) => h('span', { class: s.status, title: `${s.label}: ${s.status}` })))
      : null);
}

function renderGenerations() {
  const body = $('gen-table').querySelector('tbody');
  if (state.jobs.length === 0) {
    body.replaceChildren(emptyRow(7, 'No generations to show.'));
    return;
  }
  const me = state.claims?.sub;
  // Re-rendering replaces the rows: keep keyboard focus on the same job.
  const focused = document.activeElement?.closest?.('#gen-table tr[data-job-id]')?.dataset.jobId;
  body.replaceChildren(...state.jobs.map((job) => {
    const summary = state.summaries.get(job.id);
    return h('tr', { dataset: { jobId: job.id, status: job.status }, class: state.job?.id === job.id ? 'selected' : '' },
      h('td', {}, h('button', {
        type: 'button', class: 'job-link', title: job.id, 'aria-label': `Follow job ${job.id}`,
        onclick: () => openJob(job.id),
      }, short(job.id)), h('div', { class: 'muted' }, when(job.created_at, true))),
      h('td', {}, badge(job.status), job.cancel_requested && !FINISHED.has(job.status) ? h('div', { class: 'muted' }, 'cancel requested') : null,
        job.error ? h('div', { class: 'step-error', title: job.error }, job.error.slice(0, 80)) : null),
      h('td', { title: job.user_id }, h('span', { class: 'mono' }, short(job.user_id)), job.user_id === me ? ' (you)' : ''),
      h('td', {}, job.engine_name || engineName(job.engine_id)),
      h('td', {}, progressCell(job, summary)),
      h('td', {}, summary?.models?.length
        ? h('div', { class: 'chips' }, summary.models.map((m) => h('span', { class: 'chip' }, m.name, m.fallback ? h('span', { class: 'role' }, ' · fallback') : null)))
        : '—'),
      h('td', {}, tokens(job.usage)));
  }));
  if (focused) body.querySelector(`tr[data-job-id="${focused}"] button.job-link`)?.focus();
}

// Job timeline (Server-Sent Events over fetch: EventSource cannot send Authorization)

function stopJob() {
  if (state.job?.abort) state.job.abort.abort();
  state.job = null;
}

function openJob(id) {
  stopJob();
  const abort = new AbortController();
  state.job = { id, abort, detail: null, texts: new Map(), last: 0 };
  $('job').hidden = false;
  $('job').closest('.gen-layout').classList.add('with-job');
  $('job-title').textContent = `Job ${short(id)}`;
  delete $('job').dataset.status;
  $('job-facts').replaceChildren();
  $('job-steps').replaceChildren();
  $('job-stream').textContent = 'Connecting to live updates…';
  for (const tr of document.querySelectorAll('#gen-table tr[data-job-id]')) tr.classList.toggle('selected', tr.dataset.jobId === id);
  history.replaceState(null, '', `#generations/${id}`);
  follow(id, abort.signal);
  $('job-title').focus();
}

function closeJob() {
  const id = state.job?.id;
  stopJob();
  $('job').hidden = true;
  $('job').closest('.gen-layout').classList.remove('with-job');
  for (const tr of document.querySelectorAll('#gen-table tr.selected')) tr.classList.remove('selected');
  if (state.tab === 'generations') history.replaceState(null, '', '#generations');
  if (id) document.querySelector(`#gen-table tr[data-job-id="${id}"] button.job-link`)?.focus();
}

async function follow(id, signal, attempt = 0) {
  const streamText = $('job-stream');
  try {
    // On a reconnect, only the text rows not yet shown (the stream resumes after them).
    const last = state.job?.id === id ? state.job.last : 0;
    const resp = await fetch(`/v1/generations/${id}/events`, {
      headers: {
        Accept: 'text/event-stream',
        Authorization: `Bearer ${state.token}`,
        ...(last > 0 ? { 'Last-Event-ID': String(last) } : {}),
      },
      signal,
    });
    if (!resp.ok) {
      const text = await resp.text();
      let data = null;
      try { data = JSON.parse(text); } catch { data = null; }
      throw toApiError(resp, data, text);
    }
    streamText.textContent = 'Live: updates as the worker runs each step, text as it is written.';
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let finished = false;
    while (!finished) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n/g, '\n');
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        finished = onEvent(id, parseEvent(block)) || finished;
      }
    }
    if (!finished && !signal.aborted && state.job?.id === id) {
      // The stream ended early (server restart, proxy timeout): reconnect.
      if (attempt < 5) setTimeout(() => { if (state.job?.id === id) follow(id, signal, attempt + 1); }, 1000);
    }
  } catch (e) {
    if (signal.aborted || state.job?.id !== id) return;
    const err = e instanceof ApiError ? e : new ApiError(0, 'network_error', e.message);
    streamText.textContent = `Live updates stopped: ${sentence(err.message)} (${err.code})`;
    if (err.status === 0 && attempt < 5) {
      setTimeout(() => { if (state.job?.id === id) follow(id, signal, attempt + 1); }, 2000);
    } else {
      showError('Following the job', err);
    }
  }
}

function parseEvent(block) {
  let event = 'message';
  let id = null;
  const data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id') id = value;
  }
  return { event, id, data: data.join('\n') };
}

/** Handle one event; returns true when the stream is over. */
function onEvent(id, { event, data }) {
  if (!data || state.job?.id !== id) return false;
  let payload;
  try { payload = JSON.parse(data); } catch { return false; }
  if (ROW_KINDS.has(event)) {
    onRow(payload);
    return false;
  }
  if (event === 'error') {
    $('job-stream').textContent = `The live feed reported a problem: ${sentence(payload.message)} (${payload.code})`;
    return payload.code === 'generation_not_found';
  }
  if (event !== 'progress' && event !== 'done') return false;
  renderJob(payload);
  // Keep the list row in step with the stream.
  const i = state.jobs.findIndex((j) => j.id === payload.id);
  state.summaries.set(payload.id, summarize(payload));
  const { steps, ...job } = payload;
  if (i >= 0) state.jobs[i] = job;
  else if (!$('gen-status').value || $('gen-status').value === job.status) state.jobs.unshift(job); // newer than the last refresh
  renderGenerations();
  if (event === 'done') {
    $('job-stream').textContent = `Finished: ${payload.status}. The timeline below is final.`;
    return true;
  }
  return false;
}

/** One row of the job's text: the call's text so far, by the rule of sql/V11 (the
 * `delta` texts after its last attempt/discard/restart: a retried call starts over). */
function onRow(row) {
  const job = state.job;
  if (!(row.seq > job.last)) return;
  job.last = row.seq;
  const key = `${row.step_id}:${row.item_index}`;
  const known = job.texts.has(key);
  job.texts.set(key, row.kind === 'delta' ? (job.texts.get(key) ?? '') + (row.text ?? '') : '');
  const el = document.querySelector(`#job-steps pre[data-live-key="${CSS.escape(key)}"]`);
  if (el) {
    const follow = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
    el.textContent = job.texts.get(key);
    if (follow) el.scrollTop = el.scrollHeight;
  } else if (job.detail && !known) {
    renderJob(job.detail); // a call the step records do not show yet
  }
}

/** The text a call has streamed so far, under its timeline entry. */
function liveText(s, label) {
  const key = `${s.step_id}:${s.item_index}`;
  const text = state.job?.texts.get(key);
  if (text === undefined) return null;
  return h('pre', { class: 'live-text', dataset: { liveKey: key }, 'aria-label': `Text of ${label}`, tabindex: '0' }, text);
}

/** The step records, plus a running entry for each call that streams text before its
 * record shows it (a record is written once a call has run for a while). */
function withStreamingCalls(steps) {
  const have = new Set(steps.map((s) => `${s.step_id}:${s.item_index}`));
  const extra = [];
  for (const key of state.job?.texts.keys() ?? []) {
    if (have.has(key)) continue;
    const cut = key.lastIndexOf(':');
    extra.push({ step_id: key.slice(0, cut), item_index: Number(key.slice(cut + 1)), status: 'running', attempts: 0 });
  }
  return steps.concat(extra);
}

function fact(term, ...value) {
  return [h('dt', {}, term), h('dd', {}, ...value)];
}

function renderJob(job) {
  state.job.detail = job;
  const p = job.progress || {};
  const finished = FINISHED.has(job.status);
  $('job').dataset.status = job.status;
  $('job-facts').replaceChildren(
    ...fact('Status', badge(job.status), job.cancel_requested && !finished ? ' cancel requested' : ''),
    ...fact('Engine', job.engine_name || '—', job.engine_version ? ` · version ${job.engine_version}` : ''),
    ...fact('User', h('span', { class: 'mono' }, job.user_id)),
    ...fact('Progress', p.total ? `${p.done ?? 0} of ${p.total} done${p.current && !finished ? ` · now ${p.current}` : ''}` : '—'),
    ...fact('Tokens', tokens(job.usage)),
    ...fact('Attempt', `${job.attempt ?? 0} of ${job.max_attempts ?? '?'}`),
    ...fact('Requested', when(job.created_at)),
    ...fact('Started', when(job.started_at)),
    ...fact('Finished', when(job.finished_at)),
    ...(job.input?.topic ? fact('Topic', String(job.input.topic)) : []),
    ...(job.error ? fact('Error', h('span', { class: 'step-error' }, job.error)) : []),
  );
  const cancel = $('job-cancel');
  cancel.disabled = finished || job.cancel_requested;
  cancel.textContent = job.cancel_requested && !finished ? 'Cancel requested' : 'Cancel job';
  const groups = groupSteps(withStreamingCalls(Array.isArray(job.steps) ? job.steps : []));
  $('job-steps').replaceChildren(...(groups.length
    ? groups.map((g) => (g.fanOut ? fanOutItem(g) : stepItem(g.rows[0], g.id)))
    : [h('li', { class: 'pending' }, h('span', { class: 'meta' }, finished ? 'No steps were run.' : 'No step has started yet.'))]));
}

/** Step records grouped by step, in execution order. Each step has its own row
 * (item_index -1); a fan-out step also has one row per item (0, 1, ...), and its own
 * row, a summary listing the items' models, is written once every item is done. */
function groupSteps(steps) {
  const groups = new Map();
  for (const s of steps) {
    if (!groups.has(s.step_id)) groups.set(s.step_id, { id: s.step_id, rows: [], summary: null });
    const g = groups.get(s.step_id);
    if (s.item_index < 0) g.summary = s; else g.rows.push(s);
  }
  // A step that is not a fan-out has just its own row.
  return [...groups.values()].map((g) => (g.rows.length
    ? { ...g, rows: g.rows.sort((a, b) => a.item_index - b.item_index), fanOut: true }
    : { ...g, rows: [g.summary], fanOut: false }));
}

function stepMeta(s) {
  return [
    s.provider || s.model ? `${s.provider ?? '?'}/${s.model ?? '?'}` : null,
    s.attempts ? `${s.attempts} attempt${s.attempts === 1 ? '' : 's'}` : null,
    s.usage && (s.usage.input_tokens || s.usage.output_tokens) ? tokens(s.usage) : null,
    typeof s.latency_ms === 'number' ? duration(s.latency_ms) : null,
  ].filter(Boolean).join(' · ');
}

function stepItem(s, label) {
  const meta = stepMeta(s);
  return h('li', { class: s.status, dataset: { stepId: s.step_id, itemIndex: String(s.item_index), status: s.status } },
    h('div', {}, h('span', { class: 'step-title' }, label), ' ', badge(s.status), s.fallback_used ? h('span', {}, ' ', badge('fallback', 'warn')) : null),
    meta ? h('div', { class: 'meta' }, meta) : null,
    s.error ? h('div', { class: 'step-error' }, s.error) : null,
    liveText(s, label));
}

function fanOutItem(g) {
  const rows = g.rows;
  const status = g.summary?.status
    ?? (rows.some((r) => r.status === 'failed') ? 'failed' : 'running');
  const done = rows.filter((r) => r.status === 'succeeded').length;
  const usage = rows.reduce((u, r) => ({
    input_tokens: u.input_tokens + (r.usage?.input_tokens || 0),
    output_tokens: u.output_tokens + (r.usage?.output_tokens || 0),
  }), { input_tokens: 0, output_tokens: 0 });
  const total = g.summary?.attempt_log?.[0]?.items ?? rows.length;
  return h('li', { class: status, dataset: { stepId: g.id, status, fanOut: 'true' } },
    h('div', {}, h('span', { class: 'step-title' }, g.id), ' ', badge(status),
      g.summary?.fallback_used ? h('span', {}, ' ', badge('fallback', 'warn')) : null),
    h('div', { class: 'meta' }, [`one call per item: ${done} of ${total} done`,
      usage.input_tokens || usage.output_tokens ? tokens(usage) : null].filter(Boolean).join(' · ')),
    g.summary?.error ? h('div', { class: 'step-error' }, g.summary.error) : null,
    h('ol', { class: 'items', 'aria-label': `Items of step ${g.id}` },
      rows.map((r) => stepItem(r, `item ${r.item_index + 1}`))));
}

async function cancelJob() {
  const id = state.job?.id;
  if (!id) return;
  const ok = await confirmDialog({
    title: 'Cancel this generation?',
    text: `Stop job ${short(id)}? Steps already finished are kept; the rest are not run.`,
    ok: 'Cancel job',
    cancel: 'Keep running',
  });
  if (!ok) return;
  try {
    await api('POST', `/v1/generations/${id}/cancel`);
    say(`Cancellation of job ${short(id)} requested.`);
  } catch (e) {
    showError('Cancelling the job', e);
  }
}

// ---------------------------------------------------------------- wiring

function init() {
  $('signin-form').addEventListener('submit', (ev) => { ev.preventDefault(); signIn($('token-input').value); });
  $('sign-out').addEventListener('click', signOut);
  $('tabs').addEventListener('keydown', onTabKey);
  for (const t of TAB_NAMES) $(`tab-${t}`).addEventListener('click', () => selectTab(t, false));

  $('engines-refresh').addEventListener('click', refreshEngines);
  $('deploy-form').addEventListener('submit', deployFlow);
  $('flow-file').addEventListener('change', loadFlowFile);
  $('flow-input').addEventListener('input', () => $('flow-input').removeAttribute('aria-invalid'));
  $('versions-close').addEventListener('click', closeVersions);
  $('diff-form').addEventListener('submit', showDiff);

  $('assignments-refresh').addEventListener('click', refreshAssignments);
  $('assign-filter').addEventListener('change', renderAssignments);
  $('add-kind').addEventListener('change', onAddKind);
  $('add-form').addEventListener('submit', addAssignment);
  $('bulk-preview').addEventListener('click', previewBulk);
  $('bulk-form').addEventListener('submit', submitBulk);
  $('bulk-form').addEventListener('input', invalidateBulk);
  $('bulk-form').addEventListener('change', invalidateBulk);
  $('mine-load').addEventListener('click', loadMine);

  $('gen-status').addEventListener('change', refreshGenerations);
  $('gen-limit').addEventListener('change', refreshGenerations);
  $('gen-live').addEventListener('change', () => ($('gen-live').checked ? startGenerations() : stopGenerations()));
  $('job-close').addEventListener('click', closeJob);
  $('job-cancel').addEventListener('click', cancelJob);
  $('job').addEventListener('keydown', (ev) => { if (ev.key === 'Escape') closeJob(); });
  window.addEventListener('hashchange', () => followHash());
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && state.tab === 'generations' && state.token && $('gen-live').checked && !state.genTimer) startGenerations();
  });

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved && decodeJwt(saved)) {
    state.token = saved;
    state.claims = decodeJwt(saved);
    enterApp();
  } else {
    $('signin').hidden = false;
    loadDevUsers();
  }
}

init();
