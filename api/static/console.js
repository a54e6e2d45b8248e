// The review console's only script: while a retry runs, the segment page asks the server for its
// runs and attempts every two seconds and swaps them in, so attempts appear as they finish
// without a reload (a form being filled in keeps its text). When the retry's phase changes (it
// finished, or went to review), the whole page is loaded again: the forms that fit the new phase
// come with it. Without JavaScript the page refreshes itself instead (<noscript> in its head).
(function () {
  "use strict";
  var EVERY_MS = 2000;

  function runs() {
    return document.getElementById("runs");
  }

  function poll() {
    var current = runs();
    if (!current || !current.dataset.live) {
      return;
    }
    if (document.hidden) {
      setTimeout(poll, EVERY_MS);
      return;
    }
    fetch(current.dataset.live, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "text/html" },
    })
      .then(function (r) {
        if (!r.ok || r.redirected) {
          // Signed out, or the segment is gone: the page itself says why.
          throw new Error("reload");
        }
        return r.text();
      })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, "text/html").getElementById("runs");
        if (!next || next.dataset.phase !== current.dataset.phase) {
          throw new Error("reload");
        }
        if (next.innerHTML !== current.innerHTML) {
          current.innerHTML = next.innerHTML;
        }
        setTimeout(poll, EVERY_MS);
      })
      .catch(function (e) {
        if (e && e.message === "reload") {
          window.location.replace(window.location.pathname);
        } else {
          // The API restarting, a network blip: try again a little later.
          setTimeout(poll, EVERY_MS * 2);
        }
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setTimeout(poll, EVERY_MS);
  });
})();
