// The Generations tab's list: the jobs the token can see, refreshed every 2 s while
// "Live" is on, each with its progress by step and the models it used.

import { client, isFinished } from './api.js';
import { $, badge, emptyRow, h, short, tokens, when } from './dom.js';
import { clearError, showError } from './messages.js';
import { engineName, state } from './state.js';
import { openJob } from './timeline.js';

const REFRESH_MS = 2000;

export function startGenerations() {
  stopGenerations();
  const tick = async () => {
    await refreshGenerations();
    if (state.tab === 'generations' && state.token && $('gen-live').checked) {
      state.genTimer = setTimeout(tick, REFRESH_MS);
    }
  };
  tick();
}

export function stopGenerations() {
  clearTimeout(state.genTimer);
  state.genTimer = null;
}

/** What the list shows of a job's details: its models and a segment per call. */
export function summarize(detail) {
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
    return !s || !isFinished(s) || s.updated_at !== j.updated_at;
  });
  const queue = [...wanted];
  const worker = async () => {
    while (queue.length) {
      const job = queue.shift();
      try {
        state.summaries.set(job.id, summarize(await client.getGeneration(job.id)));
      } catch {
        // The list still shows the job; its summary comes on the next refresh.
      }
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
}

export async function refreshGenerations() {
  if (state.genBusy || !state.token) return;
  state.genBusy = true;
  try {
    const jobs = await client.listGenerations({ limit: $('gen-limit').value, status: $('gen-status').value });
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
    h('div', { class: 'progress-text' }, label, p.current && !isFinished(job) ? ` · ${p.current}` : ''),
    summary?.segments?.length
      ? h('div', { class: 'segments', 'aria-hidden': 'true' }, summary.segments.map((s) => h('span', { class: s.status, title: `${s.label}: ${s.status}` })))
      : null);
}

export function renderGenerations() {
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
      h('td', {}, badge(job.status), job.cancel_requested && !isFinished(job) ? h('div', { class: 'muted' }, 'cancel requested') : null,
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
