/* Live events: follow /api/stream (Server-Sent Events) and keep the table, the health banner and the funnel current.
   Captured values are hostile: rows are built with createElement/textContent only, never parsed as markup. */
(function () {
  "use strict";

  var root = document.getElementById("live");
  if (!root || root.getAttribute("data-live") !== "1") return;
  var cw = window.clickwatch;
  var tbody = document.getElementById("rows");
  var empty = document.getElementById("empty");
  var conn = document.getElementById("conn");
  var query = root.getAttribute("data-query") || "";
  var limit = Number(root.getAttribute("data-limit")) || 500;
  var hasOlder = document.querySelector(".pager") !== null;
  var lastSeq = Number(root.getAttribute("data-after")) || 0;
  var source = null;
  var summaryTimer = null;
  var summaryLast = 0;
  var SUMMARY_EVERY_MS = 1000; // at most one summary request per second and page, however fast events arrive
  // Once the stream brings the summary (and the funnel) itself, computed once a second for every page of the run,
  // this page stops asking for them: 200 open pages cost one summary a second, not 200.
  var summaryPushed = false;
  var funnelPushed = false;
  var funnel = document.getElementById("funnel");
  var funnelRows = document.getElementById("funnel-rows");
  var funnelEmpty = document.getElementById("funnel-empty");
  var funnelRun = funnel ? funnel.getAttribute("data-run") || "" : "";
  var funnelTimer = null;
  var funnelLast = 0;
  var FUNNEL_EVERY_MS = 1000; // at most one funnel request per second
  var FUNNEL_POLL_MS = 5000; // pushes that bring no delivery (no stream event) still show within seconds
  var SVG = "http://www.w3.org/2000/svg";
  var STEPS = ["pushed", "pushed_with_consent", "sent", "delivered"];

  function token(value) {
    /* Class names come from fixed vocabularies; anything else is shown as 'unknown'. */
    return /^[a-z_]{1,40}$/.test(String(value)) ? String(value) : "unknown";
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function cell(className, child) {
    var td = el("td", className);
    if (child) td.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    return td;
  }

  function muted(text) {
    return el("span", "muted", text);
  }

  function timeNode(ts) {
    if (ts === null || ts === undefined) return muted("—");
    var node = el("time", null, cw.formatTime(ts));
    node.dateTime = cw.isoTime(ts);
    node.title = cw.isoTime(ts);
    return node;
  }

  function duration(ms) {
    if (ms === null || ms === undefined) return "—";
    return ms < 1000 ? ms.toFixed(0) + " ms" : (ms / 1000).toFixed(2) + " s";
  }

  function statusNode(item) {
    if (item.status_code !== null && item.status_code !== undefined) return document.createTextNode(String(item.status_code));
    if (item.error) {
      var span = el("span", "status-error", "error");
      span.title = String(item.error);
      return span;
    }
    return muted("—");
  }

  /* The same markup as the row macro in templates/macros.html. */
  function buildRow(item) {
    var tr = el("tr");
    tr.setAttribute("data-id", String(Number(item.id)));
    tr.setAttribute("data-seq", String(Number(item.seq)));
    tr.setAttribute("data-sent", String(Number(item.sent_at)));

    var link = el("a");
    link.href = "/deliveries/" + Number(item.id);
    link.appendChild(timeNode(item.sent_at));
    tr.appendChild(cell("col-time", link));
    tr.appendChild(cell("col-kind", String(item.kind) + (item.target_kind ? " → " + String(item.target_kind) : "")));
    tr.appendChild(cell("col-schema", item.schema_name ? String(item.schema_name) : muted("—")));
    tr.appendChild(cell("col-verdict", el("span", "verdict verdict-" + token(item.verdict), item.verdict)));
    tr.appendChild(cell("col-status num", statusNode(item)));
    tr.appendChild(cell("col-duration num", duration(item.duration_ms)));

    var visitor = el("a", "mono", item.visitor);
    visitor.href = "/visitors/" + encodeURIComponent(String(item.visitor));
    visitor.title = item.client_addr ? String(item.client_addr) : "";
    tr.appendChild(cell("col-visitor", visitor));

    var findings = cell("col-findings");
    (item.findings || []).forEach(function (f) {
      var badge = el("span", "badge sev-" + token(f.severity), f.kind);
      badge.title = String(f.severity) + ": " + String(f.message);
      findings.appendChild(badge);
    });
    tr.appendChild(findings);
    return tr;
  }

  function newerThan(item, row) {
    var sent = Number(row.getAttribute("data-sent"));
    return item.sent_at > sent || (item.sent_at === sent && item.id > Number(row.getAttribute("data-id")));
  }

  function upsert(item) {
    var existing = tbody.querySelector('tr[data-id="' + Number(item.id) + '"]');
    var row = buildRow(item);
    if (existing) {
      if (Number(existing.getAttribute("data-seq")) > Number(item.seq)) return;
      row.className = "changed";
      tbody.replaceChild(row, existing);
      return;
    }
    // Newest first: a new delivery lands on top; a late change to an older one lands where it belongs.
    var before = null;
    for (var i = 0; i < tbody.rows.length; i++) {
      if (newerThan(item, tbody.rows[i])) {
        before = tbody.rows[i];
        break;
      }
    }
    if (!before && hasOlder) return; // it belongs on an older page
    row.className = "fresh";
    tbody.insertBefore(row, before);
    while (tbody.rows.length > limit) {
      tbody.deleteRow(tbody.rows.length - 1);
      hasOlder = true;
    }
    empty.hidden = true;
  }

  function setConn(state, text) {
    if (!conn) return;
    conn.className = "conn conn-" + state;
    conn.textContent = text;
  }

  function applySummary(s) {
    var counts = s.deliveries || {};
    var total = 0;
    Object.keys(counts).forEach(function (k) { total += Number(counts[k]) || 0; });
    var pending = Number(counts.pending) || 0;
    // Deliveries still without an answer (a tenant that hangs) are not healthy yet: "Waiting", with how many
    // and for how long the oldest has waited. Failing stays failing.
    var state = total === 0 ? "waiting" : (!s.healthy ? "failing" : (pending ? "pending" : "healthy"));
    var banner = document.getElementById("health");
    banner.className = "health health-" + state;
    document.getElementById("health-word").textContent =
      { waiting: "Waiting for traffic", pending: "Waiting", healthy: "Healthy", failing: "Failing" }[state];
    var note = document.getElementById("health-pending");
    if (note) {
      note.hidden = state !== "pending";
      var oldest = s.oldest_pending_at ? Math.max(0, Math.round(Date.now() / 1000 - s.oldest_pending_at)) : null;
      note.textContent = pending + " without an answer" + (oldest !== null ? ", oldest sent " + oldest + " s ago" : "");
    }
    var cells = banner.querySelectorAll("[data-count]");
    for (var i = 0; i < cells.length; i++) {
      cells[i].textContent = String(Number(counts[cells[i].getAttribute("data-count")]) || 0);
    }
    var sev = banner.querySelectorAll("[data-severity]");
    for (var j = 0; j < sev.length; j++) {
      sev[j].textContent = String(Number((s.severities || {})[sev[j].getAttribute("data-severity")]) || 0);
    }
    var last = document.getElementById("health-last");
    last.replaceChildren(timeNode(s.last_delivered_at));
  }

  function refreshSummary() {
    summaryTimer = null;
    if (summaryPushed) return;
    summaryLast = Date.now();
    fetch("/api/summary" + (query ? "?" + query : ""), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) { if (s) applySummary(s); })
      .catch(function () { /* the next event tries again */ });
  }

  function scheduleSummary() {
    // Coalesced: the events of a second (a batch of the live feed arrives at once) cost one request, not one each.
    if (summaryPushed || summaryTimer !== null) return;
    summaryTimer = window.setTimeout(refreshSummary, Math.max(0, SUMMARY_EVERY_MS - (Date.now() - summaryLast)));
  }

  /* The funnel: one row per schema, the same markup as the funnel_row macro in templates/macros.html. */
  function count(value) {
    var n = Number(value);
    return isFinite(n) && n > 0 ? Math.floor(n) : 0;
  }

  function barWidth(value, top) {
    return top > 0 ? String(Math.round(10000 * value / top) / 100) : "0";
  }

  function bar(className, y, value, top) {
    var rect = document.createElementNS(SVG, "rect");
    rect.setAttribute("class", "bar " + className);
    rect.setAttribute("x", "0");
    rect.setAttribute("y", y);
    rect.setAttribute("height", "7");
    rect.setAttribute("width", barWidth(value, top));
    return rect;
  }

  function buildFunnelRow(step, top) {
    var tr = el("tr");
    var schema = step.schema === null || step.schema === undefined ? "" : String(step.schema);
    tr.setAttribute("data-schema", schema);
    var th = el("th", "funnel-schema", schema || null);
    th.scope = "row";
    if (!schema) th.appendChild(muted("no schema"));
    tr.appendChild(th);
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "funnel-svg");
    svg.setAttribute("viewBox", "0 0 100 26");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    svg.appendChild(bar("bar-pushed", "0", count(step.pushed), top));
    svg.appendChild(bar("bar-consent", "0", count(step.pushed_with_consent), top));
    svg.appendChild(bar("bar-sent", "9.5", count(step.sent), top));
    svg.appendChild(bar("bar-delivered", "19", count(step.delivered), top));
    tr.appendChild(cell("funnel-bars", svg));
    STEPS.forEach(function (name) {
      var td = el("td", "num", String(count(step[name])));
      td.setAttribute("data-step", name);
      tr.appendChild(td);
    });
    return tr;
  }

  function applyFunnel(f) {
    var steps = f && Array.isArray(f.schemas) ? f.schemas : [];
    var top = 1;
    steps.forEach(function (step) { top = Math.max(top, count(step.pushed), count(step.sent)); });
    funnelRows.replaceChildren.apply(funnelRows, steps.map(function (step) { return buildFunnelRow(step, top); }));
    funnelEmpty.hidden = steps.length > 0;
  }

  function refreshFunnel() {
    funnelTimer = null;
    if (funnelPushed) return;
    funnelLast = Date.now();
    var url = "/api/funnel" + (funnelRun ? "?run=" + encodeURIComponent(funnelRun) : "");
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (f) { if (f) applyFunnel(f); })
      .catch(function () { /* the next event or poll tries again */ });
  }

  function scheduleFunnel() {
    if (!funnel || funnelPushed || funnelTimer !== null) return;
    funnelTimer = window.setTimeout(refreshFunnel, Math.max(0, FUNNEL_EVERY_MS - (Date.now() - funnelLast)));
  }

  function connect() {
    var params = new URLSearchParams(query);
    params.set("after", String(lastSeq));
    params.set("totals", "true");
    source = new EventSource("/api/stream?" + params.toString());
    source.addEventListener("open", function () { setConn("live", "live"); });
    source.addEventListener("delivery", function (event) {
      var item;
      try {
        item = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      var seq = Number(event.lastEventId);
      if (seq > lastSeq) lastSeq = seq;
      upsert(item);
      scheduleSummary();
      scheduleFunnel();
    });
    source.addEventListener("summary", function (event) {
      var s;
      try {
        s = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      summaryPushed = true;
      applySummary(s);
    });
    source.addEventListener("funnel", function (event) {
      var f;
      try {
        f = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      if (!funnel || (f && f.run ? String(f.run) : "") !== funnelRun) return;
      funnelPushed = true;
      applyFunnel(f);
    });
    source.addEventListener("reconnect", function () {
      // This page fell too far behind the live feed: the stream ends and EventSource resumes from Last-Event-ID.
      setConn("connecting", "catching up…");
    });
    source.addEventListener("error", function () {
      // EventSource retries by itself, sending Last-Event-ID; once it gives up (an HTTP error), start over.
      if (source.readyState === EventSource.CLOSED) {
        setConn("off", "disconnected, retrying…");
        window.setTimeout(connect, 5000);
      } else {
        setConn("connecting", "reconnecting…");
      }
    });
  }

  connect();
  if (funnel) {
    // Until the stream brings the funnel: pushes that bring no delivery (no stream event) still show within seconds.
    window.setInterval(function () { if (!document.hidden) scheduleFunnel(); }, FUNNEL_POLL_MS);
  }
})();
