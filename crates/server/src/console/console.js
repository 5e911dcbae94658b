// fernwart console: live parts of a page. The server says by server-sent events (/events)
// which kind of state changed; the page is then fetched again and each of its live parts
// (data-live="KIND") is swapped for the fresh one. Without this script pages read the same.
(function () {
  "use strict";
  // Copy buttons (hidden without this script): the named field's text to the clipboard.
  document.querySelectorAll("button.copy[data-copy]").forEach(function (b) {
    var field = document.getElementById(b.getAttribute("data-copy"));
    if (!field || !navigator.clipboard) return;
    b.hidden = false;
    b.addEventListener("click", function () {
      navigator.clipboard.writeText(field.value).then(function () {
        b.setAttribute("data-copied", "true");
      }, function () {
        field.select();
      });
    });
  });

  if (!window.EventSource || !window.fetch || !window.DOMParser) return;
  if (!document.querySelector("[data-live]")) return;

  var busy = false;
  var again = false;

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html", "X-Fernwart-Live": "1" } })
      .then(function (r) {
        // Logged out or refused meanwhile: leave the page as it is.
        if (r.redirected || !r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (old) {
          var kind = old.getAttribute("data-live");
          var next = fresh.querySelector('[data-live="' + kind + '"]');
          if (!next) return;
          // Keep the keyboard where it was, if the same control is still there.
          var focused = document.activeElement;
          var had = focused && old.contains(focused) && focused.getAttribute("aria-label");
          var node = document.importNode(next, true);
          old.replaceWith(node);
          if (had) {
            node.querySelectorAll("[aria-label]").forEach(function (e) {
              if (e.getAttribute("aria-label") === had) e.focus();
            });
          }
        });
        document.documentElement.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  function wants(kind) {
    return kind === "all" || document.querySelector('[data-live="' + kind + '"]') !== null;
  }

  // One stream per visible page: a hidden tab gives its connection back (a browser holds
  // only a few per server over HTTP/1.1) and catches up when shown again.
  var source = null;
  function listen() {
    if (source) return;
    source = new EventSource("/events");
    ["sessions", "machines", "connections", "all"].forEach(function (kind) {
      source.addEventListener(kind, function () { if (wants(kind)) refresh(); });
    });
    source.addEventListener("open", function () {
      document.documentElement.setAttribute("data-live-connected", "true");
    });
  }
  function stop() {
    if (!source) return;
    source.close();
    source = null;
    document.documentElement.removeAttribute("data-live-connected");
  }
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { stop(); } else { listen(); refresh(); }
  });
  if (!document.hidden) listen();
})();
