// An engine's versions (Engines tab): history with each version's numbers, a diff of
// two versions, rollback, and a rollout of a candidate to a share of the users.

import { client } from './api.js';
import { $, badge, duration, h, when } from './dom.js';
import { checkLabel, refreshEngines } from './engines.js';
import { confirmDialog, say, showError } from './messages.js';
import { state } from './state.js';

const pct = (x) => (x == null ? '—' : `${Math.round(x * 100)} %`);
const msText = (x) => (x == null ? '—' : duration(Math.round(x)));

export async function openVersions(engine) {
  state.versionsOf = engine;
  $('versions').hidden = false;
  $('versions-title').textContent = `Versions of "${engine.name}"`;
  $('diff-result').replaceChildren();
  await refreshVersions();
  $('versions-title').scrollIntoView({ block: 'nearest' });
}

export function closeVersions() {
  state.versionsOf = null;
  $('versions').hidden = true;
}

async function refreshVersions() {
  const engine = state.versionsOf;
  if (!engine) return;
  let history;
  try {
    history = await client.getEngineVersions(engine.id);
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
    const check = checkLabel(v.check_state);
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

export async function showDiff(event) {
  event.preventDefault();
  const engine = state.versionsOf;
  if (!engine) return;
  let d;
  try {
    d = await client.diffEngineVersions(engine.id, $('diff-from').value, $('diff-to').value);
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
    const created = await client.rollbackEngine(engine.id, v.version);
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
    const r = await client.startRollout(engine.id, version, percent);
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
    const r = await client.promoteRollout(engine.id);
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
    await client.abortRollout(engine.id);
    say('Rollout aborted: every user is on the current version.');
    await refreshVersions();
  } catch (e) {
    showError('Aborting the rollout', e);
  }
}
