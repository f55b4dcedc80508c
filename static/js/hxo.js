// HXO dashboard: the only script besides htmx (no inline scripts: a CSP of 'self' holds).

// Marks the page as scripted, so controls that exist only for browsers without JavaScript
// (the editor's "Update choices" button) can be hidden by CSS.
document.documentElement.classList.add("js");

// A field that htmx focused after a swap (a new stage's id) gets its text selected, as
// tabbing into it would: typing replaces the suggested value instead of prefixing it.
document.addEventListener("htmx:afterSettle", function () {
  var el = document.activeElement;
  if (el && el.matches && el.matches("input[autofocus]")) {
    el.select();
  }
});
