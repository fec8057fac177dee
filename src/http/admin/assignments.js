// The Assignments tab: who may use which engine (add, change the priority, switch off,
// remove), and the signed-in user's resolution order. Bulk assignment is in bulk.js.

import { client, refusal } from './api.js';
import { $, badge, emptyRow, h, when } from './dom.js';
import { clearError, confirmDialog, say, showError } from './messages.js';
import { whoText } from './session.js';
import { engineName, state, targetText, UUID_RE } from './state.js';

/** The engine pickers of this tab (add, filter, bulk), keeping what was chosen. */
export function renderEngineChoices() {
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

export async function refreshAssignments() {
  try {
    const [engines, assignments] = await Promise.all([client.getEngines(), client.getAssignments()]);
    state.engines = engines;
    state.assignments = assignments;
  } catch (e) {
    showError('Loading assignments', e);
    return;
  }
  renderEngineChoices();
  renderAssignments();
}

/** By engine, then a user's own before tiers (as resolution does), then priority. */
function sortAssignments(list) {
  return [...list].sort((a, b) => engineName(a.engine_id).localeCompare(engineName(b.engine_id))
    || (a.assignment_type === b.assignment_type ? 0 : a.assignment_type === 'user' ? -1 : 1)
    || (b.priority ?? 0) - (a.priority ?? 0)
    || String(a.tier ?? a.user_id).localeCompare(String(b.tier ?? b.user_id)));
}

export function renderAssignments() {
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
    showError('Saving the priority', refusal('invalid_assignment', 'the priority must be a whole number'));
    input.focus();
    return;
  }
  await patchAssignment(a, { priority: value }, `Priority of ${engineName(a.engine_id)} for ${targetText(a)} is now ${value}.`);
}

async function patchAssignment(a, patch, message) {
  try {
    const updated = await client.updateAssignment(a.id, patch);
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
    await client.removeAssignment(a.id);
    say(`Assignment of ${what} removed.`);
    await refreshAssignments();
  } catch (e) {
    showError('Removing the assignment', e);
  }
}

export function onAddKind() {
  const user = $('add-kind').value === 'user';
  $('add-tier').hidden = user;
  $('add-tier-label').hidden = user;
  $('add-user').hidden = !user;
  $('add-user-label').hidden = !user;
}

export async function addAssignment(event) {
  event.preventDefault();
  const engineId = $('add-engine').value;
  const priority = Number($('add-priority').value || 0);
  if (!engineId) return showError('Assigning', refusal('invalid_assignment', 'choose an engine first (deploy one on the Engines tab)'));
  if (!Number.isInteger(priority)) return showError('Assigning', refusal('invalid_assignment', 'the priority must be a whole number'));
  const assignment = { engine_id: engineId, priority };
  if ($('add-kind').value === 'user') {
    const user = $('add-user').value.trim();
    if (!UUID_RE.test(user)) {
      $('add-user').focus();
      return showError('Assigning', refusal('invalid_assignment', `"${user}" is not a user id (a UUID like 00000000-0000-0000-0000-000000000000)`));
    }
    assignment.user_id = user;
  } else {
    assignment.tier = $('add-tier').value;
  }
  try {
    const a = await client.assignEngine(assignment);
    say(`${engineName(a.engine_id)} is assigned to ${targetText(a)} with priority ${a.priority ?? 0}.`);
    clearError();
    await refreshAssignments();
  } catch (e) {
    showError('Assigning', e);
  }
}

/** Who gets which engine: the signed-in token's user's engines, in resolution order. */
export async function loadMine() {
  const table = $('mine-table');
  const empty = $('mine-empty');
  try {
    const list = await client.getMyEngines();
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
