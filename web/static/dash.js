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
  }
  function applyNodePage(m) {
    var n = m.node;
    if (n.mac !== document.body.dataset.mac) return;
    var st = document.getElementById("state");
    if (st) { st.textContent = n.state; st.className = "badge state-" + n.state; }
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
