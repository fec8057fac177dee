// The Engines tab's table: each deployed engine with its check, models and switches.

import { client } from './api.js';
import { renderEngineChoices } from './assignments.js';
import { $, badge, emptyRow, h, when } from './dom.js';
import { confirmDialog, say, showError } from './messages.js';
import { state } from './state.js';
import { openVersions } from './versions.js';

export async function refreshEngines() {
  try {
    state.engines = await client.getEngines();
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

/** A check state (engine_checks) as a badge's text and class. */
export function checkLabel(checkState) {
  return { runnable: ['runnable', 'ok'], not_runnable: ['not runnable', 'failed'], pending: ['checking…', 'pending'] }[checkState]
    ?? [checkState, 'pending'];
}

/**
 * The service's check of an engine (engine_checks): whether it can run, why not
 * (each issue with its path), and how the React app's spellings were read.
 */
function engineCheck(check) {
  if (!check) return null;
  const label = checkLabel(check.state);
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

async function toggleEngine(engine) {
  try {
    const updated = await client.updateEngine(engine.id, { active: !engine.active });
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
    await client.deleteEngine(engine.id);
    say(`Engine "${engine.name}" deleted.`);
    await refreshEngines();
    $('engines-refresh').focus();
  } catch (e) {
    showError('Deleting the engine', e);
  }
}
