// Following one job (Generations tab): its facts and step timeline, kept current by the
// client's streamGeneration (progress events, and each call's text as it is written;
// the client reopens a dropped stream where it left off).

import { client, isFinished } from './api.js';
import { $, badge, duration, h, short, tokens, when } from './dom.js';
import { renderGenerations, summarize } from './generations.js';
import { confirmDialog, say, sentence, showError } from './messages.js';
import { state } from './state.js';

export function stopJob() {
  if (state.job?.abort) state.job.abort.abort();
  state.job = null;
}

export function openJob(id) {
  stopJob();
  const job = { id, abort: new AbortController(), detail: null, texts: new Map() };
  state.job = job;
  $('job').hidden = false;
  $('job').closest('.gen-layout').classList.add('with-job');
  $('job-title').textContent = `Job ${short(id)}`;
  delete $('job').dataset.status;
  $('job-facts').replaceChildren();
  $('job-steps').replaceChildren();
  $('job-stream').textContent = 'Connecting to live updates…';
  for (const tr of document.querySelectorAll('#gen-table tr[data-job-id]')) tr.classList.toggle('selected', tr.dataset.jobId === id);
  history.replaceState(null, '', `#generations/${id}`);
  follow(job);
  $('job-title').focus();
}

export function closeJob() {
  const id = state.job?.id;
  stopJob();
  $('job').hidden = true;
  $('job').closest('.gen-layout').classList.remove('with-job');
  for (const tr of document.querySelectorAll('#gen-table tr.selected')) tr.classList.remove('selected');
  if (state.tab === 'generations') history.replaceState(null, '', '#generations');
  if (id) document.querySelector(`#gen-table tr[data-job-id="${id}"] button.job-link`)?.focus();
}

/** Stream `job` until it ends, it is closed, or the stream cannot be reopened. */
async function follow(job) {
  const line = $('job-stream');
  // Another job opened meanwhile (or this one closed): its late events are not ours.
  const current = () => state.job === job;
  try {
    await client.streamGeneration(job.id, {
      signal: job.abort.signal,
      onOpen: () => {
        if (current()) line.textContent = 'Live: updates as the worker runs each step, text as it is written.';
      },
      onDrop: ({ error }) => {
        if (!current()) return;
        line.textContent = error
          ? `Reconnecting to live updates: ${sentence(error.message)} (${error.code})`
          : 'Reconnecting to live updates…';
      },
      onDelta: (row, text) => { if (current()) onText(row, text); },
      onEvent: (event) => { if (current()) onEvent(event); },
    });
  } catch (e) {
    if (job.abort.signal.aborted || !current()) return;
    line.textContent = `Live updates stopped: ${sentence(e.message)} (${e.code ?? 'error'})`;
    showError('Following the job', e);
  }
}

/** A progress, done or error event (text rows come through onText). */
function onEvent({ type, data }) {
  if (!data || typeof data !== 'object') return;
  if (type === 'error') {
    $('job-stream').textContent = `The live feed reported a problem: ${sentence(data.message)} (${data.code})`;
    return;
  }
  if (type !== 'progress' && type !== 'done') return;
  renderJob(data);
  // Keep the list row in step with the stream.
  const i = state.jobs.findIndex((j) => j.id === data.id);
  state.summaries.set(data.id, summarize(data));
  const { steps, ...listed } = data;
  if (i >= 0) state.jobs[i] = listed;
  else if (!$('gen-status').value || $('gen-status').value === listed.status) state.jobs.unshift(listed); // newer than the last refresh
  renderGenerations();
  if (type === 'done') $('job-stream').textContent = `Finished: ${data.status}. The timeline below is final.`;
}

/** A call's text so far (the client reassembles it: a retried call starts over). */
function onText(row, text) {
  const job = state.job;
  const key = `${row.step_id}:${row.item_index}`;
  const known = job.texts.has(key);
  job.texts.set(key, text);
  const el = document.querySelector(`#job-steps pre[data-live-key="${CSS.escape(key)}"]`);
  if (el) {
    const atEnd = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
    el.textContent = text;
    if (atEnd) el.scrollTop = el.scrollHeight;
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
  const finished = isFinished(job);
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

export async function cancelJob() {
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
    await client.cancelGeneration(id);
    say(`Cancellation of job ${short(id)} requested.`);
  } catch (e) {
    showError('Cancelling the job', e);
  }
}
