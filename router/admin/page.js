// The status page: /api/requests once, then /api/events (server-sent events) for live updates.
// Everything from the router is inserted as text (textContent), never as markup: paths and
// headers come from users and backends.
"use strict";

const MAX_ROWS = 500;
const requests = new Map(); // id -> record
let selected = null;

function $(id) { return document.getElementById(id); }

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function duration(seconds) {
  if (seconds < 60) return seconds.toFixed(0) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(0) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function renderStatus(status) {
  const r = status.router;
  const state = $("state");
  state.textContent = r.draining ? "draining" : r.ready ? "ready" : "starting";
  state.className = "badge" + (r.ready ? "" : " draining");
  $("front-end").textContent = r.front_end || "-";
  $("tunnel-port").textContent = r.tunnel_port || "none";
  $("uptime").textContent = duration(r.uptime);
  $("in-flight").textContent = r.in_flight;
  $("queued").textContent = r.queued;
  $("websockets").textContent = r.websockets;
  const box = $("services");
  box.replaceChildren();
  let tunnels = 0;
  for (const service of status.services) {
    tunnels += service.tunnels.length;
    const div = document.createElement("div");
    div.className = "service";
    div.dataset.service = service.name;
    const h3 = document.createElement("h3");
    h3.textContent = service.name === "-" ? "(no service matched)" : service.name;
    const rates = document.createElement("span");
    rates.className = "rates";
    rates.textContent = `${service.requests_per_second.toFixed(1)} req/s, ` +
      `${service.errors_per_second.toFixed(1)} errors/s (5xx); ` +
      `${service.requests_total} requests, ${service.errors_total} errors since start`;
    h3.appendChild(rates);
    div.appendChild(h3);
    if (service.tunnels.length) {
      const table = document.createElement("table");
      table.className = "tunnels";
      const head = table.createTHead().insertRow();
      for (const name of ["instance", "tunnel", "address", "age", "in flight", "RTT", "weight", "served", "state"]) {
        const th = document.createElement("th");
        th.textContent = name;
        head.appendChild(th);
      }
      const body = table.createTBody();
      for (const t of service.tunnels) {
        const row = body.insertRow();
        row.dataset.tunnel = t.id;
        row.dataset.instance = t.instance;
        const state = t.draining ? "draining" : t.ejected ? "ejected" : "ready";
        row.className = "tunnel " + state;
        cell(row, t.instance, "instance");
        cell(row, t.id);
        cell(row, t.address);
        cell(row, duration(t.age));
        cell(row, `${t.in_flight} / ${t.max_streams}`);
        cell(row, t.rtt_ms === null ? null : t.rtt_ms.toFixed(1) + " ms");
        cell(row, t.weight);
        cell(row, t.served);
        cell(row, state, "state");
      }
      div.appendChild(table);
    }
    box.appendChild(div);
  }
  $("no-tunnels").hidden = tunnels > 0;
}

function matches(record, filter) {
  if (!filter) return true;
  const status = String(record.status);
  const haystack = [record.method, record.host, record.path, status, status[0] + "xx",
    record.service, record.instance, record.tunnel, record.kind].join(" ").toLowerCase();
  return filter.split(/\s+/).every((word) => haystack.includes(word));
}

function requestRow(record) {
  const row = document.createElement("tr");
  row.dataset.id = record.id;
  row.className = "request s" + String(record.status)[0];
  cell(row, new Date(record.at * 1000).toLocaleTimeString());
  cell(row, record.kind === "websocket" ? "WS" : record.method, "method");
  cell(row, record.host, "host");
  cell(row, record.path, "path");
  cell(row, record.status, "status");
  cell(row, record.duration_ms.toFixed(1), "duration");
  cell(row, `${record.bytes_in} / ${record.bytes_out}`, "bytes");
  cell(row, record.service, "service");
  cell(row, record.tunnel, "tunnel");
  cell(row, record.instance, "instance");
  row.addEventListener("click", () => showDetails(record.id));
  return row;
}

function addRequest(record) {
  requests.set(record.id, record);
  const body = $("requests").tBodies[0];
  const row = requestRow(record);
  row.hidden = !matches(record, $("filter").value.trim().toLowerCase());
  body.insertBefore(row, body.firstChild);
  while (requests.size > MAX_ROWS) {
    const oldest = requests.keys().next().value;
    requests.delete(oldest);
    body.lastChild.remove();
  }
  $("kept").textContent = requests.size;
}

function applyFilter() {
  const filter = $("filter").value.trim().toLowerCase();
  for (const row of $("requests").tBodies[0].rows) {
    row.hidden = !matches(requests.get(Number(row.dataset.id)), filter);
  }
}

function fillHeaders(table, headers) {
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const [name, value] of headers) {
    const row = body.insertRow();
    cell(row, name);
    cell(row, value);
  }
}

function showDetails(id) {
  const record = requests.get(id);
  if (!record) return;
  selected = id;
  for (const row of $("requests").tBodies[0].rows) {
    row.classList.toggle("selected", Number(row.dataset.id) === id);
  }
  $("details-title").textContent = `${record.method} ${record.host}${record.path} → ${record.status}`;
  fillHeaders($("request-headers"), record.request_headers);
  fillHeaders($("response-headers"), record.response_headers);
  const bodies = record.request_body !== null || record.response_body !== null;
  $("bodies").hidden = !bodies;
  $("request-body").textContent = record.request_body || "";
  $("response-body").textContent = record.response_body || "";
  $("details").hidden = false;
}

function connect() {
  const events = new EventSource("/api/events");
  events.addEventListener("open", () => {
    $("live").textContent = "live";
    $("live").className = "badge";
  });
  events.addEventListener("error", () => {
    $("live").textContent = "reconnecting";
    $("live").className = "badge off";
  });
  events.addEventListener("status", (event) => renderStatus(JSON.parse(event.data)));
  events.addEventListener("request", (event) => {
    const record = JSON.parse(event.data);
    if (!requests.has(record.id)) addRequest(record);
  });
}

async function start() {
  $("filter").addEventListener("input", applyFilter);
  $("close-details").addEventListener("click", () => {
    $("details").hidden = true;
    selected = null;
  });
  try {
    const [status, recent] = await Promise.all([
      fetch("/api/status").then((r) => r.json()),
      fetch("/api/requests").then((r) => r.json()),
    ]);
    renderStatus(status);
    for (const record of recent.requests) addRequest(record);
  } catch (error) {
    $("state").textContent = "unreachable";
  }
  connect();
}

document.addEventListener("DOMContentLoaded", start);
