// herd dashboard: live updates over server-sent events (/api/v1/events).
// The pages are complete without this script; it only keeps them current.
(function () {
  "use strict";
  if (!window.EventSource) return;
  var page = document.body.dataset.page;
  var live = document.getElementById("live");

  function ago(iso) {
    if (!iso || iso.indexOf("0001-") === 0) return "";
    var s = Math.max(0, Math.floor((Date.now() - Date.parse(iso)) / 1000));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m";
    if (s < 86400) return Math.floor(s / 3600) + "h" + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d" + Math.floor((s % 86400) / 3600) + "h";
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function setField(row, name, nodes) {
    var td = row.querySelector('[data-field="' + name + '"]');
    if (!td) return;
    td.textContent = "";
    nodes.forEach(function (n) { td.appendChild(typeof n === "string" ? document.createTextNode(n) : n); });
  }
  function applyRow(n) {
    var row = document.querySelector('tr[data-mac="' + n.mac + '"]');
    if (!row) {
      var note = document.getElementById("newnode");
      if (note) note.hidden = false;
      return;
    }
    var r = n.seen || {};
    row.className = "state-" + n.state;
    setField(row, "state", [el("span", "badge", n.state)]);
    if (r.stage) {
      var p = el("progress");
      p.max = 100; p.value = r.percent || 0; p.textContent = (r.percent || 0) + "%";
      setField(row, "progress", [el("span", "stage", r.stage), " ", p, " ", el("span", "pct", (r.percent || 0) + "%"), " ", el("small", "msg", r.message || "")]);
    }
    if (r.image) {
      var c = el("code", "", r.image.slice(0, 12));
      var tbl = document.getElementById("nodes");
      var cur = tbl ? tbl.dataset.current : "";
      setField(row, "image", cur && cur === r.image ? [c, " ", el("small", "", "current")] : [c]);
    }
    if (r.up_time) {
      var t = el("time", "", ago(r.up_time) + " ago");
      t.setAttribute("datetime", r.up_time);
      setField(row, "lastboot", [t]);
    }
    setField(row, "uptime", [n.state === "up" && r.up_time ? ago(r.up_time) : "-"]);
    if (!n.ip && r.last_dhcp_ip) setField(row, "address", [r.last_dhcp_ip]);
    applyStatus(row, n);
  }
  function healthEl(h) {
    return el("span", "health health-" + h.split(":")[0], h);
  }
  // The node's latest status report: health, busy and one line per GPU.
  function applyStatus(row, n) {
    if (!n.status) return;
    setField(row, "health", [n.health ? healthEl(n.health) : "-"]);
    setField(row, "busy", [n.busy ? el("b", "", "busy") : "idle"]);
    var gpus = (n.gpus || []).map(function (g) {
      var d = el("div", "gpu");
      d.dataset.gpu = g.index;
      d.appendChild(el("span", "model", g.model));
      d.appendChild(document.createTextNode(" "));
      d.appendChild(el("span", "mem", g.memory_used_mib + "/" + g.memory_total_mib + " MiB"));
      d.appendChild(document.createTextNode(" "));
      d.appendChild(el("span", "util", g.utilization_percent + "%"));
      d.appendChild(document.createTextNode(" "));
      var procs = g.processes || [];
      d.appendChild(procs.length ? el("span", "procs", procs.length + " proc") : el("span", "free", "free"));
      if (g.health !== "ok") { d.appendChild(document.createTextNode(" ")); d.appendChild(el("span", "warn", g.health)); }
      return d;
    });
    setField(row, "gpus", gpus.length ? gpus : [el("span", "muted", "none")]);
  }
  // The node page's GPU table, rebuilt from the report.
  function applyGPUTable(n) {
    var tb = document.querySelector("#gpus tbody");
    if (!tb || !n.status) return;
    tb.textContent = "";
    (n.gpus || []).forEach(function (g) {
      var tr = el("tr");
      tr.dataset.gpu = g.index; tr.dataset.uuid = g.uuid;
      var cells = [["GPU", "", String(g.index)], ["Model", "model", g.model],
        ["Memory", "memory", g.memory_used_mib + " / " + g.memory_total_mib + " MiB"],
        ["Utilisation", "util", g.utilization_percent + "%"], ["Temperature", "temp", g.temperature_c + " \u00b0C"],
        ["Power", "power", Math.round(g.power_w) + " W"], ["Health", "gpuhealth", g.health]];
      cells.forEach(function (c) {
        var td = el("td", "", c[2]);
        td.dataset.label = c[0];
        if (c[1]) td.dataset.field = c[1];
        tr.appendChild(td);
      });
      var pt = el("td");
      pt.dataset.label = "Processes"; pt.dataset.field = "procs";
      var procs = g.processes || [];
      if (!procs.length) pt.appendChild(el("span", "free", "free"));
      procs.forEach(function (p) {
        var d = el("div", "", p.pid + " " + (p.user ? p.user + " " : ""));
        d.appendChild(el("code", "", p.name || ""));
        d.appendChild(document.createTextNode(" " + p.memory_mib + " MiB"));
        pt.appendChild(d);
      });
      tr.appendChild(pt);
      tb.appendChild(tr);
    });
    var h = document.getElementById("health");
    if (h && n.health) { h.textContent = ""; h.appendChild(healthEl(n.health)); }
  }
  function applyNodePage(m) {
    var n = m.node;
    if (n.mac !== document.body.dataset.mac) return;
    var st = document.getElementById("state");
    if (st) { st.textContent = n.state; st.className = "badge state-" + n.state; }
    applyGPUTable(n);
    if (m.kind === "status") return; // reports are not timeline lines
    var r = n.seen || {};
    var sg = document.getElementById("stage");
    if (sg && r.stage) sg.textContent = r.stage + " " + (r.percent || 0) + "% " + (r.message || "");
    var tl = document.getElementById("timeline");
    if (!tl) return;
    var empty = tl.querySelector(".empty");
    if (empty) empty.remove();
    var li = el("li");
    var when = (m.event ? m.event.time : new Date().toISOString()).replace(/\.\d+Z$/, "Z");
    var t = el("time", "", when); t.setAttribute("datetime", when);
    var what = m.event ? m.event.stage : m.kind;
    li.appendChild(t); li.appendChild(document.createTextNode(" "));
    li.appendChild(el("b", "", what));
    if (m.event) li.appendChild(document.createTextNode(" " + m.event.percent + "% " + (m.event.message || "")));
    tl.insertBefore(li, tl.firstChild);
  }

  var es = new EventSource("/api/v1/events");
  es.onopen = function () { if (live) { live.textContent = "live"; live.className = "live on"; } };
  es.onerror = function () { if (live) { live.textContent = "reconnecting"; live.className = "live"; } };
  es.addEventListener("snapshot", function (e) {
    if (page === "nodes") JSON.parse(e.data).forEach(applyRow);
  });
  es.addEventListener("node", function (e) {
    var m = JSON.parse(e.data);
    if (page === "nodes") applyRow(m.node);
    if (page === "node") applyNodePage(m);
  });
  es.addEventListener("reload", function () { es.close(); location.reload(); });
})();
