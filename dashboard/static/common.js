/* clickwatch pages: shared helpers. No framework, no build step; data only ever goes into textContent. */
(function () {
  "use strict";

  function pad(n, width) {
    var s = String(n);
    while (s.length < width) s = "0" + s;
    return s;
  }

  /* A time no date can hold (a store may hold any number) is shown as its number, as the server does. */
  function unshowable(d, ts) {
    return isNaN(d.getTime()) ? "out of range (" + ts + " s)" : null;
  }

  /* Epoch seconds -> local 'HH:MM:SS.mmm', with the date in front unless it is today. */
  function formatTime(ts) {
    var d = new Date(ts * 1000);
    if (unshowable(d, ts)) return unshowable(d, ts);
    var clock = pad(d.getHours(), 2) + ":" + pad(d.getMinutes(), 2) + ":" + pad(d.getSeconds(), 2) +
      "." + pad(d.getMilliseconds(), 3);
    var now = new Date();
    if (d.toDateString() === now.toDateString()) return clock;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1, 2) + "-" + pad(d.getDate(), 2) + " " + clock;
  }

  function isoTime(ts) {
    var d = new Date(ts * 1000);
    return unshowable(d, ts) || d.toISOString();
  }

  /* Server-rendered times are UTC (readable without script); show them in the viewer's time zone. */
  function localizeTimes(root) {
    var times = (root || document).querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var ms = Date.parse(times[i].getAttribute("datetime"));
      if (!isNaN(ms)) times[i].textContent = formatTime(ms / 1000);
    }
  }

  /* Filter forms: leave empty fields out of the URL, and apply a select as soon as it changes. */
  function tidyFilterForms() {
    var forms = document.querySelectorAll("form.filters");
    for (var i = 0; i < forms.length; i++) {
      var form = forms[i];
      form.addEventListener("submit", function (event) {
        var fields = event.target.elements;
        for (var j = 0; j < fields.length; j++) {
          if (fields[j].name && fields[j].value === "") fields[j].disabled = true;
        }
      });
      var selects = form.querySelectorAll("select");
      for (var k = 0; k < selects.length; k++) {
        selects[k].addEventListener("change", function (event) {
          event.target.form.requestSubmit();
        });
      }
    }
  }

  /* The 'store not available yet' page: try again on its own, the proxy may just be starting. */
  function retryLater() {
    var retry = document.getElementById("retry");
    if (!retry) return;
    var seconds = Number(retry.getAttribute("data-seconds")) || 5;
    window.setTimeout(function () { window.location.reload(); }, seconds * 1000);
  }

  window.clickwatch = { formatTime: formatTime, isoTime: isoTime, localizeTimes: localizeTimes };

  localizeTimes(document);
  tidyFilterForms();
  retryLater();
})();
