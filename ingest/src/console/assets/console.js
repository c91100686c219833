// mailpipe console: refreshes each page's live part (#live) every 3 seconds by fetching
// the same page and swapping that part in. No inline script anywhere (the CSP forbids it).
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) { return; }
  function refresh() {
    if (document.hidden) { return; }
    fetch(window.location.href, {
      credentials: "same-origin",
      redirect: "manual",
      headers: { "X-Console-Refresh": "1" }
    })
      .then(function (r) {
        if (r.type === "opaqueredirect") { window.location.assign("/console/login"); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (!html) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live");
        if (fresh) { live.replaceChildren.apply(live, Array.from(fresh.childNodes)); }
      })
      .catch(function () { /* the next tick tries again */ });
  }
  window.setInterval(refresh, 3000);
})();
