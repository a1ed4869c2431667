/* Stand-in Profile Tag. Reads the storefront's data layer (window.Y_TRACKING.eventLayer) and sends its events
   to the tenant the way SAP's Profile Tag does:
   - nothing until ConsentChanged {granted: true}: earlier events are dropped, not queued;
   - then one consent reference (POST consentReferences, 201 with the reference), kept for later pages in
     localStorage "profiletag" ({"cr": {"<siteId>-consentReference": {"consentReference": ...}}}, where
     Spartacus reads it) and the <siteId>-consentReference cookie, and announced with the window event
     profiletag_consentReferenceLoaded (detail.consentReference);
   - then each event as a POST to /edge/clickstreamEvents with hybris-schema and consent-reference;
   - ConsentChanged {granted: false} clears the reference (storage and cookie) and stops tracking; granting
     again obtains a new one.
   The tenant's configuration (/config/<id>) can switch on faulty behaviour: trackBeforeConsent (consent is
   ignored), earlyTracking (tracks from the start, taking "not granted" for "not decided yet", until it first
   hears granted: true; from then on it follows consent), duplicateEvents (every event sent twice), omitConsentReference (no consent-reference header),
   dropEvents (data-layer names the tag silently never sends), extraFields (fields added to every event's body,
   each with the value "stand-in").
   Y_TRACKING.standin tells a scripted shopper when everything the page pushed has been handled. */
(function () {
  "use strict";

  var Y = (window.Y_TRACKING = window.Y_TRACKING || {});
  var layer = (Y.eventLayer = Y.eventLayer || []);
  var init = (Y.q && Y.q[0] && Y.q[0][0]) || {};
  var SCHEMAS = {
    ProductDetailsPageViewed: "ProductView",
    CategoryPageViewed: "CategoryView",
    KeywordSearch: "KeywordSearch",
    AddedToCart: "AddedToCart",
    ModifiedCart: "ModifiedCart",
    RemovedFromCart: "RemovedFromCart",
    CartSnapshot: "CartSnapshot",
    OrderConfirmationPageViewed: "OrderCreated",
    CarouselViewed: "carouselViewed",
    CarouselClicked: "carouselClicked"
  };
  var STORAGE_KEY = "profiletag";
  var cookieName = (init.siteId || "site") + "-consentReference";
  var config = null;
  var behaviour = {};
  var dropped = {};
  var extraFields = [];
  var granted = false;
  var reference = storedReference() || readCookie(cookieName);
  var obtaining = false;
  var waiting = []; // events consent allowed, waiting for the consent reference
  var handled = 0;
  var status = (Y.standin = {
    ready: false,
    inflight: 0,
    sent: [],
    reference: function () { return reference; },
    settled: function () {
      // Without a configuration nothing will ever be sent: that is settled too.
      return status.ready && (!config || handled >= layer.length) && status.inflight === 0 && !obtaining;
    }
  });

  function readCookie(name) {
    var parts = document.cookie ? document.cookie.split("; ") : [];
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (parts[i].slice(0, eq) === name) return decodeURIComponent(parts[i].slice(eq + 1));
    }
    return null;
  }

  function readStorage() {
    try {
      var meta = JSON.parse(window.localStorage.getItem(STORAGE_KEY) || "null");
      return meta && typeof meta === "object" && meta.cr && typeof meta.cr === "object" ? meta : { cr: {} };
    } catch (e) {
      return { cr: {} };
    }
  }

  function storedReference() {
    var entry = readStorage().cr[cookieName];
    return (entry && entry.consentReference) || null;
  }

  function keepReference(value) {
    reference = value;
    var secure = window.location.protocol === "https:" ? "; Secure" : "";
    document.cookie = cookieName + "=" + (value ? encodeURIComponent(value) : "") + "; path=/; SameSite=Lax" + secure +
      (value ? "" : "; Max-Age=0");
    var meta = readStorage();
    if (value) meta.cr[cookieName] = { consentReference: value };
    else delete meta.cr[cookieName];
    try {
      if (Object.keys(meta.cr).length) window.localStorage.setItem(STORAGE_KEY, JSON.stringify(meta));
      else window.localStorage.removeItem(STORAGE_KEY);
    } catch (e) {
      /* no storage: the cookie still holds it */
    }
  }

  function post(url, headers, body) {
    status.inflight += 1;
    return fetch(url, { method: "POST", headers: headers, body: body, credentials: "omit", keepalive: true })
      .finally(function () { status.inflight -= 1; });
  }

  function obtainReference() {
    if (reference || obtaining) return;
    obtaining = true;
    var body = JSON.stringify({ siteId: init.siteId, consentTemplateId: "PROFILE", consentTemplateVersion: 1 });
    post(config.consentReferenceUrl, { "content-type": "application/json" }, body)
      .then(function (response) { return response.status === 201 ? response.json() : null; })
      .then(function (answer) {
        if (!answer || !answer.id || !granted) return;
        keepReference(answer.id);
        window.dispatchEvent(new CustomEvent("profiletag_consentReferenceLoaded", {
          detail: { consentReference: answer.id }
        }));
      })
      .catch(function () { /* no reference: events keep waiting until a later page tries again */ })
      .then(function () {
        obtaining = false;
        var ready = reference ? waiting : [];
        waiting = reference ? [] : waiting;
        ready.forEach(function (event) { send(event[0], event[1]); });
      });
  }

  function withExtraFields(data) {
    if (!extraFields.length) return data;
    var copy = {};
    Object.keys(data).forEach(function (key) { copy[key] = data[key]; });
    extraFields.forEach(function (name) { copy[name] = "stand-in"; });
    return copy;
  }

  function send(schema, data) {
    data = withExtraFields(data);
    var headers = { "content-type": "application/json", "hybris-schema": "context/commerce/" + schema };
    if (!behaviour.omitConsentReference) headers["consent-reference"] = reference;
    var copies = behaviour.duplicateEvents ? 2 : 1;
    for (var i = 0; i < copies; i++) {
      post(config.clickstreamUrl, headers, JSON.stringify(data)).then(
        function (response) { status.sent.push({ schema: schema, status: response.status }); },
        function (error) { status.sent.push({ schema: schema, status: 0, error: String(error) }); }
      );
    }
  }

  // (The faulty tag remembers across pages that the shopper has decided once: a later "not granted" is a refusal.)
  var heardGranted = window.localStorage.getItem("profiletag-decided") === "1";

  function consentChanged(isGranted) {
    if (behaviour.trackBeforeConsent) return; // the faulty tag does not listen to consent at all
    if (behaviour.earlyTracking && !isGranted && !heardGranted) return; // the faulty tag: "not yet" is no refusal
    if (isGranted && !heardGranted) {
      heardGranted = true;
      window.localStorage.setItem("profiletag-decided", "1");
    }
    granted = isGranted;
    if (granted) {
      obtainReference();
    } else {
      waiting = [];
      keepReference(null);
    }
  }

  function handle(event) {
    if (!event || typeof event.name !== "string") return;
    if (event.name === "ConsentChanged") {
      consentChanged(Boolean(event.data && event.data.granted));
      return;
    }
    var schema = SCHEMAS[event.name];
    if (!schema || !granted || dropped[event.name]) return; // not tracked, no consent, or a faulty tag: dropped
    if (reference) send(schema, event.data || {});
    else {
      waiting.push([schema, event.data || {}]);
      obtainReference();
    }
  }

  function drain() {
    if (!config) return;
    while (handled < layer.length) handle(layer[handled++]);
  }

  var originalPush = layer.push;
  layer.push = function () {
    var length = originalPush.apply(layer, arguments);
    drain();
    return length;
  };

  fetch(init.configUrl, { credentials: "omit" })
    .then(function (response) { return response.json(); })
    .then(function (answer) {
      config = answer;
      behaviour = answer.behaviour || {};
      (behaviour.dropEvents || []).forEach(function (name) { dropped[name] = true; });
      extraFields = behaviour.extraFields || [];
      if (behaviour.trackBeforeConsent || (behaviour.earlyTracking && !heardGranted)) {
        granted = true;
        obtainReference();
      }
      drain();
    })
    .catch(function (error) { status.error = String(error); })
    .then(function () { status.ready = true; });
})();
