// Bulk assignment (Assignments tab): several engines × several tiers and users, written
// all-or-nothing, and only as previewed (any change to the form voids the preview).

import { client, refusal } from './api.js';
import { refreshAssignments } from './assignments.js';
import { $, badge, h } from './dom.js';
import { clearError, say, showError } from './messages.js';
import { engineName, state, UUID_RE } from './state.js';

/** The request the form describes; throws a refusal when it is incomplete. */
function bulkRequest() {
  const engineIds = [...document.querySelectorAll('#bulk-engines input:checked')].map((i) => i.value);
  const tiers = [...document.querySelectorAll('input[name="bulk-tier"]:checked')].map((i) => i.value);
  const users = $('bulk-users').value.split(/[\s,;]+/).map((s) => s.trim()).filter(Boolean);
  const raw = $('bulk-priority').value.trim();
  const priority = raw === '' ? 0 : Number(raw);
  const bad = users.filter((u) => !UUID_RE.test(u));
  if (engineIds.length === 0) throw refusal('invalid_assignment', 'choose at least one engine');
  if (tiers.length === 0 && users.length === 0) throw refusal('invalid_assignment', 'choose at least one tier or enter at least one user id');
  if (bad.length) throw refusal('invalid_assignment', `these are not user ids (UUIDs): ${bad.join(', ')}`);
  if (!Number.isInteger(priority)) throw refusal('invalid_assignment', 'the priority must be a whole number');
  return { engine_ids: engineIds, tiers, user_ids: [...new Set(users.map((u) => u.toLowerCase()))], priority, active: true };
}

export function invalidateBulk() {
  state.bulk = null;
  $('bulk-submit').disabled = true;
  $('bulk-preview-area').hidden = true;
}

export function previewBulk() {
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

export async function submitBulk(event) {
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
    showError('Bulk assign', refusal('preview_needed', 'the choices changed since the preview: press Preview again'));
    return;
  }
  $('bulk-submit').disabled = true;
  try {
    const written = await client.bulkAssign(req);
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
