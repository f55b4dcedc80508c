// HXO dashboard: the only script besides htmx. Marks the page as scripted, so controls that
// exist only for browsers without JavaScript (an "Update choices" button) can be hidden.
document.documentElement.classList.add("js");
