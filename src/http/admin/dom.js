// Building the page's DOM: elements are created, never parsed from HTML strings, so
// nothing the API returns can become markup.

export const $ = (id) => document.getElementById(id);

/** Create an element: h('td', {class: 'x', text: 'y'}, child, ...). Never parses HTML. */
export function h(tag, attrs = {}, ...children) {
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
export function when(iso, compact = false) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const today = d.toDateString() === new Date().toDateString();
  const text = compact && today
    ? d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' })
    : d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
  return h('time', { datetime: iso, title: d.toLocaleString() }, text);
}

export function duration(ms) {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

export const short = (id) => (id ? String(id).slice(0, 8) : '—');
export const badge = (text, cls = text) => h('span', { class: `badge ${cls}` }, text);
export const tokens = (u) => (u && (u.input_tokens || u.output_tokens)
  ? `${(u.input_tokens || 0).toLocaleString()} in · ${(u.output_tokens || 0).toLocaleString()} out`
  : '—');

export function emptyRow(colspan, text) {
  return h('tr', {}, h('td', { colspan, class: 'empty' }, text));
}
