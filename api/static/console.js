// The review console's only script, on the segment page. Two jobs:
// 1. While a retry runs, it asks the server for the segment's runs and attempts every two
//    seconds and swaps them in (the review queue's table likewise, so a segment escalated while
//    the queue is open appears in it), so attempts appear as they finish without a reload (a form being
//    filled in keeps its text). When the retry's phase changes (it finished, or went to review),
//    the whole page is loaded again: the forms that fit the new phase come with it. Without
//    JavaScript the page refreshes itself instead (<noscript> in its head).
// 2. Comparing and deciding by keyboard: j/k choose an attempt, f shows its output at full size
//    in a dialog where j/k flip between attempts (A/B) and z toggles actual pixels, a accepts
//    the chosen attempt, x goes to the reject reason, n opens the next segment awaiting review.
//    The page lists the keys. Without JavaScript every output is a link to itself at full size,
//    and every card has its own Accept button.
// 3. Rejecting and aborting ask for confirmation first.
(function () {
  "use strict";
  var EVERY_MS = 2000;

  // The part of the page that follows the server: a segment's runs while it retries, or the
  // review queue's table (always).
  function live() {
    return document.querySelector("[data-live]");
  }

  function poll() {
    var current = live();
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
        var next = new DOMParser().parseFromString(html, "text/html").getElementById(current.id);
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

  // ---- Comparing and deciding by keyboard -------------------------------------------------

  // The attempts a creator compares: those of the current run (older runs' cards are history).
  function cards() {
    var current = document.querySelectorAll("article.attempt[data-current]");
    return Array.prototype.slice.call(
      current.length ? current : document.querySelectorAll("article.attempt")
    );
  }

  // The chosen attempt: the focused card, else the one in the viewer, else the best.
  var chosen = null;

  function chosenCard() {
    var all = cards();
    var focused = document.activeElement;
    if (focused && focused.matches && focused.matches("article.attempt")) {
      return focused;
    }
    if (chosen !== null) {
      var again = all.filter(function (c) { return c.dataset.attempt === chosen; })[0];
      if (again) {
        return again;
      }
    }
    return all.filter(function (c) { return c.dataset.best; })[0] || all[0] || null;
  }

  function choose(card) {
    if (!card) {
      return;
    }
    chosen = card.dataset.attempt;
    card.focus();
    card.scrollIntoView({ block: "nearest" });
  }

  function step(by) {
    var all = cards();
    if (!all.length) {
      return;
    }
    var at = all.indexOf(chosenCard());
    var next = all[(at + by + all.length) % all.length];
    if (viewer() && viewer().open) {
      show(next);
    } else {
      choose(next);
    }
  }

  function viewer() {
    return document.getElementById("viewer");
  }

  // Show `card`'s output at full size in the viewer (opening it if needed).
  function show(card) {
    var v = viewer();
    if (!v || !card) {
      return;
    }
    chosen = card.dataset.attempt;
    var link = card.querySelector("a.full");
    var stage = document.getElementById("viewer-stage");
    stage.textContent = "";
    if (link) {
      var media = document.createElement(link.dataset.kind === "video" ? "video" : "img");
      media.src = link.getAttribute("href");
      if (link.dataset.kind === "video") {
        media.controls = true;
        media.autoplay = true;
        media.loop = true;
        media.muted = true;
        media.setAttribute("aria-label", "output of attempt " + chosen + " at full size");
      } else {
        media.alt = "output of attempt " + chosen + " at full size";
      }
      stage.appendChild(media);
    } else {
      var none = document.createElement("p");
      none.className = "muted";
      none.textContent = "Attempt " + chosen + " has no image or video to show at full size.";
      stage.appendChild(none);
    }
    document.getElementById("viewer-title").textContent =
      "Attempt " + chosen + (card.dataset.best ? " (best)" : "");
    var status = card.querySelector(".badge");
    var facts = [status ? status.textContent : ""];
    if (card.dataset.quality) {
      facts.push("quality " + card.dataset.quality);
    }
    document.getElementById("viewer-facts").textContent = facts.join(" · ");
    var accept = v.querySelector("[data-viewer=accept]");
    if (accept) {
      accept.disabled = !card.querySelector("form.accept-here");
      accept.textContent = "Accept attempt " + chosen;
    }
    if (!v.open) {
      v.showModal();
    }
  }

  function zoom() {
    var stage = document.getElementById("viewer-stage");
    var button = viewer().querySelector("[data-viewer=zoom]");
    var actual = stage.classList.toggle("actual");
    button.setAttribute("aria-pressed", actual ? "true" : "false");
    button.textContent = actual ? "Fit to window" : "Actual size";
  }

  function accept() {
    var card = chosenCard();
    var form = card && card.querySelector("form.accept-here");
    if (form) {
      form.submit();
    }
  }

  function nextSegment() {
    var v = viewer();
    var after = v ? v.dataset.segment : "";
    window.location.assign("/ui/review/next?after=" + encodeURIComponent(after));
  }

  function typing(target) {
    return (
      target &&
      (target.isContentEditable ||
        /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName || ""))
    );
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e.target) || !viewer()) {
      return;
    }
    var inViewer = viewer().open;
    var onCard = e.target.matches && e.target.matches("article.attempt");
    var handled = true;
    switch (e.key) {
      case "j":
      case "ArrowRight":
        step(1);
        break;
      case "k":
      case "ArrowLeft":
        step(-1);
        break;
      case "f":
        show(chosenCard());
        break;
      case "Enter":
        if (onCard && !inViewer) {
          show(e.target);
        } else {
          handled = false;
        }
        break;
      case "z":
        if (inViewer) {
          zoom();
        } else {
          handled = false;
        }
        break;
      case "a":
        accept();
        break;
      case "x":
        var reason = document.getElementById("reject-reason");
        if (reason) {
          if (inViewer) {
            viewer().close();
          }
          reason.focus();
        } else {
          handled = false;
        }
        break;
      case "n":
        nextSegment();
        break;
      case "?":
        var help = document.getElementById("shortcuts");
        if (help) {
          help.open = !help.open;
        }
        break;
      default:
        handled = false;
    }
    if (handled) {
      e.preventDefault();
    }
  });

  document.addEventListener("click", function (e) {
    var link = e.target.closest && e.target.closest("a.full");
    if (link && viewer()) {
      e.preventDefault();
      show(link.closest("article.attempt"));
      return;
    }
    var control = e.target.closest && e.target.closest("[data-viewer]");
    if (!control) {
      return;
    }
    switch (control.dataset.viewer) {
      case "prev":
        step(-1);
        break;
      case "next":
        step(1);
        break;
      case "zoom":
        zoom();
        break;
      case "accept":
        accept();
        break;
      case "close":
        viewer().close();
        break;
    }
  });

  // Rejecting and aborting cannot be undone: the browser asks first (Enter in the reason field
  // submits the form too). Without JavaScript the forms are sent as they are.
  document.addEventListener("submit", function (e) {
    var form = e.target;
    var question = form && form.dataset && form.dataset.confirm;
    if (question && !window.confirm(question)) {
      e.preventDefault();
    }
  });

  // Closing the viewer puts the focus back on the attempt it showed.
  document.addEventListener("DOMContentLoaded", function () {
    var v = viewer();
    if (v) {
      v.addEventListener("close", function () {
        document.getElementById("viewer-stage").textContent = "";
        choose(chosenCard());
      });
    }
  });
})();
