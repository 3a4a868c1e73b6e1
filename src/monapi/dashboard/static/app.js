/* monapi dashboard: small behaviours, and the server page's charts (uPlot). No inline scripts:
   the page's Content-Security-Policy allows only files served by monapi. */
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  // htmx requests carry the CSRF token as a header.
  document.addEventListener("htmx:configRequest", function (ev) {
    ev.detail.headers["X-CSRF-Token"] = csrfToken();
  });

  document.addEventListener("click", function (ev) {
    var opener = ev.target.closest("[data-dialog]");
    if (opener) {
      var dlg = document.getElementById(opener.getAttribute("data-dialog"));
      if (dlg && dlg.showModal) dlg.showModal();
      return;
    }
    var closer = ev.target.closest("[data-close]");
    if (closer) {
      closer.closest("dialog").close();
      return;
    }
    var copy = ev.target.closest("[data-copy]");
    if (copy) {
      var src = document.querySelector(copy.getAttribute("data-copy"));
      if (src && navigator.clipboard) {
        navigator.clipboard.writeText(src.textContent.trim()).then(function () {
          copy.textContent = "Copied";
        });
      }
    }
  });

  // Forms that need a yes before they go (revoke, remove).
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) ev.preventDefault();
    if (form.classList.contains("custom-range")) {
      form.elements.tz.value = String(new Date().getTimezoneOffset());
    }
  });

  // ---- formatting, as the server does it (charts.py fmt_value) -------------------------------
  var BIN = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  function fmtBytes(n) {
    var i = 0;
    while (Math.abs(n) >= 1024 && i < BIN.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + BIN[i];
  }
  function fmtDuration(s) {
    s = Math.floor(s);
    var d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + (s % 60) + "s";
    return s + "s";
  }
  function fmtValue(v, unit) {
    if (v === null || v === undefined) return "–";
    if (unit === "%") return v.toFixed(1) + " %";
    if (unit === "B") return fmtBytes(v);
    if (unit === "B/s") return fmtBytes(v) + "/s";
    if (unit === "s" && v >= 120) return fmtDuration(v);
    var text = Math.abs(v) >= 1000 ? Math.round(v).toLocaleString("en") :
      String(Math.round(v * 100) / 100);
    return unit ? text + " " + unit : text;
  }
  function fmtAxis(v, unit) {
    if (unit === "B" || unit === "B/s") return fmtBytes(v);
    if (unit === "s" && v >= 120) return fmtDuration(v);
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(0) + "k";
    return String(Math.round(v * 100) / 100);
  }

  var COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777",
    "#4b5563", "#65a30d", "#9333ea"];

  function tagText(tags) {
    var keys = Object.keys(tags).sort();
    if (!keys.length) return "value";
    return keys.map(function (k) { return keys.length === 1 ? tags[k] : k + "=" + tags[k]; }).join(" ");
  }

  // One aligned table for uPlot: the union of the series' timestamps, null where a series has
  // no value (uPlot leaves a gap there).
  function align(seriesList) {
    var times = {};
    seriesList.forEach(function (s) { s.points.forEach(function (p) { times[p[0]] = true; }); });
    var xs = Object.keys(times).map(Number).sort(function (a, b) { return a - b; });
    var index = {};
    xs.forEach(function (t, i) { index[t] = i; });
    var cols = seriesList.map(function (s) {
      var col = new Array(xs.length).fill(null);
      s.points.forEach(function (p) { col[index[p[0]]] = p[1] === null ? null : Number(p[1]); });
      return col;
    });
    return [xs].concat(cols);
  }

  function drawCharts(root) {
    var fields = JSON.parse(root.getAttribute("data-fields") || "[]");
    var url = root.getAttribute("data-url") + "?start=" + root.getAttribute("data-start") +
      "&end=" + root.getAttribute("data-end");
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) throw new Error("the chart data did not load (HTTP " + r.status + ")");
        return r.json();
      })
      .then(function (data) { render(root, fields, data); })
      .catch(function (err) {
        root.innerHTML = "";
        var p = document.createElement("p");
        p.className = "flash error";
        p.textContent = err.message;
        root.appendChild(p);
      });
  }

  function render(root, fields, data) {
    root.innerHTML = "";
    // Every chart spans the chosen range (not only its own data), and double-click goes back
    // to it on all charts.
    var START = Number(root.getAttribute("data-start"));
    var END = Number(root.getAttribute("data-end"));
    var byKey = {};
    data.series.forEach(function (s) {
      var key = s.measurement + "." + s.field;
      (byKey[key] = byKey[key] || []).push(s);
    });
    var plots = [];
    var syncing = false;
    var empty = [];
    fields.forEach(function (f) {
      var list = (byKey[f.key] || []).sort(function (a, b) {
        return tagText(a.tags).localeCompare(tagText(b.tags));
      });
      var count = 0;
      list.forEach(function (s) { s.points.forEach(function (p) { if (p[1] !== null) count++; }); });
      if (!count) {
        empty.push(f.key);
        return;
      }
      var measurement = f.key.split(".")[0];
      var box = document.createElement("div");
      box.className = "chart";
      box.setAttribute("data-field", f.key);
      box.setAttribute("data-points", String(count));
      var title = document.createElement("h3");
      title.textContent = f.key + (f.unit ? " (" + f.unit + ")" : "");
      box.appendChild(title);
      root.appendChild(box);
      var unit = f.unit;
      var name = f.key.slice(measurement.length + 1);
      var opts = {
        width: box.clientWidth - 12,
        height: 170,
        cursor: {
          drag: { x: true, y: false },
          sync: { key: "monapi" },
          bind: {
            dblclick: function () {
              return function () {
                plots.forEach(function (p) { p.setScale("x", { min: START, max: END }); });
                return null;
              };
            },
          },
        },
        scales: { x: { time: true, range: function (u, min, max) {
          return u.status === 0 ? [START, END] : [min, max];
        } } },
        axes: [{}, { size: 60, values: function (u, vals) {
          return vals.map(function (v) { return fmtAxis(v, unit); });
        } }],
        series: [{ value: "{YYYY}-{MM}-{DD} {HH}:{mm}:{ss}" }].concat(list.map(function (s, i) {
          return {
            label: Object.keys(s.tags).length ? tagText(s.tags) : name,
            stroke: COLORS[i % COLORS.length],
            width: 1.5,
            spanGaps: false,
            value: function (u, v) { return fmtValue(v, unit); },
          };
        })),
        hooks: {
          setScale: [function (u, key) {
            // Zoom every chart of the page together.
            if (key !== "x" || syncing) return;
            syncing = true;
            var min = u.scales.x.min, max = u.scales.x.max;
            plots.forEach(function (p) { if (p !== u) p.setScale("x", { min: min, max: max }); });
            syncing = false;
          }],
        },
      };
      plots.push(new uPlot(opts, align(list), box));
      box.setAttribute("data-drawn", "true");
    });
    if (empty.length) {
      var note = document.createElement("p");
      note.className = "nodata";
      note.id = "no-data";
      note.textContent = (plots.length ? "No data in this range for: " : "No data in this range. Fields: ") +
        empty.join(", ");
      root.appendChild(note);
    }
    if (!fields.length) {
      var p = document.createElement("p");
      p.className = "nodata";
      p.textContent = "No numeric field is configured.";
      root.appendChild(p);
    }
    root.setAttribute("data-step", String(data.step));
    root.setAttribute("data-ready", "true");
    window.addEventListener("resize", function () {
      plots.forEach(function (p) { p.setSize({ width: p.root.parentNode.clientWidth - 12, height: 170 }); });
    });
  }

  function prefillRange() {
    var form = document.querySelector("form.custom-range");
    var charts = document.getElementById("charts");
    if (!form || !charts) return;
    function local(sec) {
      var d = new Date(sec * 1000 - new Date(sec * 1000).getTimezoneOffset() * 60000);
      return d.toISOString().slice(0, 16);
    }
    if (!form.elements.start.value) form.elements.start.value = local(Number(charts.getAttribute("data-start")));
    if (!form.elements.end.value) form.elements.end.value = local(Number(charts.getAttribute("data-end")));
  }

  // The sort, order, status and page size chosen by the links in the table become the filter
  // form's, so the next search keeps them.
  document.addEventListener("htmx:afterSettle", function (ev) {
    var form = document.querySelector("form.filters");
    if (!form || !ev.detail.elt || ev.detail.elt.id !== "fleet") return;
    var params = new URLSearchParams(window.location.search);
    ["sort", "order", "status", "per_page"].forEach(function (name) {
      var input = form.elements[name];
      if (!input) return;
      var value = params.get(name);
      if (value === null) value = name === "sort" ? "hostname" : name === "order" ? "asc" :
        name === "per_page" ? "100" : "";
      input.value = value;
    });
  });

  document.addEventListener("DOMContentLoaded", function () {
    var charts = document.getElementById("charts");
    if (charts) {
      prefillRange();
      drawCharts(charts);
    }
  });
})();
