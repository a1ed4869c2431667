/* clickwatch data-layer observer (contract: docs/observer.md).

   The proxy adds it as the first script of every storefront page. It records what the page pushes to the
   Profile Tag's data layer (window.Y_TRACKING.eventLayer), the tag's consent-reference event and single-page
   navigations, and sends them to the proxy (POST /__clickwatch/observe), so clickwatch can compare what the
   storefront said with what the tag sent.

   Rule one: the page behaves exactly as without it. Every piece of ours is wrapped so no exception of ours
   escapes, the page's own exceptions pass through untouched, nothing polls, and at most one timer is pending.
   Pushes that are not objects, or have no string `name`, are recorded with name "" (it costs nothing and shows
   a malformed push). Not seen: elements added without `push` (index assignment, unshift, splice,
   Array.prototype.push.apply). */
(function () {
  "use strict";

  var FLAG = "__clickwatchObserver";
  var PATH = "/__clickwatch/observe";
  var TOKEN_PATH = "/__clickwatch/page"; // where a page without a token of its own (a service worker's copy) asks
  var MAX_EVENTS = 100; // events per request (the contract's limit)
  var MAX_BODY = 60 * 1024; // bytes per request: the proxy refuses bodies over 64 KiB
  var MAX_DATA = 4096; // bytes of one push's data as JSON; larger data is cut to its top-level scalars
  var MAX_NODES = 1000; // values copied from one push's data before it counts as too large (bounds the work)
  var MAX_DEPTH = 20;
  var MAX_URL = 2000;
  var MAX_NAME = 100;
  var MAX_SCALAR = 512; // characters kept of a string when data is cut to its scalars
  var DELAY = 250; // ms: ordinary events wait at most this long for the next batch
  var KEEPALIVE = 16 * 1024; // bytes per flush we send as keepalive requests while the page lives (see flush)

  // Once per document: a second copy (injected twice, or also included by the page) does nothing. The flag is
  // non-enumerable so the page's own walks over window do not see it.
  try {
    if (window[FLAG]) return;
    Object.defineProperty(window, FLAG, { value: true });
  } catch (e) {
    return;
  }

  // The browser's own functions, taken before any page script can wrap them (zone.js, monitoring libraries):
  // our timer wakes no framework's change detection, and our requests pass through no page code.
  var setTimer = window.setTimeout;
  var clearTimer = window.clearTimeout;
  var nativeFetch = window.fetch;
  var beacon = navigator.sendBeacon;
  var NativeBlob = window.Blob;
  var stringify = JSON.stringify;
  var now = Date.now;
  var isArray = Array.isArray;
  var keys = Object.keys;
  var define = Object.defineProperty;
  var ownProperty = Object.getOwnPropertyDescriptor;

  var page = randomId();
  // The page's token, from the element the proxy added (data-clickwatch-page): it binds our reports to this
  // document. Read while this script runs (currentScript is only set then), and taken off the element so that code
  // copying the page's markup elsewhere (session-replay tools) does not carry it away.
  var query = "";
  var asking = false;
  var deferred = false; // a flush came while asking: it is done once the answer is in
  try {
    var element = document.currentScript;
    var token = element ? element.getAttribute("data-clickwatch-page") : null;
    if (token) {
      query = "?token=" + encodeURIComponent(token);
      element.removeAttribute("data-clickwatch-page");
    } else if (element && element.hasAttribute("data-clickwatch-worker")) {
      asking = true; // a copy a service worker keeps, the same for every page it serves: no token in it
    }
  } catch (e) {
    /* no token: the proxy will not count our reports, and the page is none the worse */
  }
  if (asking) askForToken();

  // Reports wait (but for a leaving page's) until the proxy has answered: it gives this page a token of its own.
  // Nothing is sent sooner than it would have been: a flush due meanwhile is done when the answer comes.
  function askForToken() {
    try {
      nativeFetch(location.protocol + "//" + location.host + TOKEN_PATH, {
        method: "POST",
        credentials: "same-origin",
        cache: "no-store"
      }).then(function (response) {
        return response.ok ? response.json() : null;
      }).then(function (answer) {
        if (answer && typeof answer.token === "string") query = "?token=" + encodeURIComponent(answer.token);
      }, function () {
        /* no token: reports will not count */
      }).then(function () {
        asking = false;
        if (deferred) {
          deferred = false;
          flush(false);
        }
      });
    } catch (e) {
      asking = false;
    }
  }
  var queue = [];
  var timer = null;
  var hooked = []; // Y_TRACKING objects and layers already watched: never twice
  var recent = []; // the last objects recorded as pushes, so a replaced layer's copied elements are not "early" again

  function randomId() {
    var alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    var bytes = null;
    var id = "";
    try {
      bytes = window.crypto.getRandomValues(new Uint8Array(16));
    } catch (e) {
      /* no crypto: Math.random is good enough for a per-page id */
    }
    for (var i = 0; i < 16; i++) id += alphabet.charAt((bytes ? bytes[i] : Math.floor(Math.random() * 256)) % 62);
    return id;
  }

  function isObject(value) {
    return value !== null && (typeof value === "object" || typeof value === "function");
  }

  // At most `max` UTF-16 units, never half a surrogate pair (the proxy would get an unencodable string).
  function cut(text, max) {
    if (text.length <= max) return text;
    var code = text.charCodeAt(max - 1);
    return text.slice(0, code >= 0xd800 && code <= 0xdbff ? max - 1 : max);
  }

  // UTF-8 size of a string (a surrogate pair counts 6 instead of 4: a safe overestimate).
  function byteLength(text) {
    var n = text.length;
    for (var i = 0; i < text.length; i++) {
      var code = text.charCodeAt(i);
      if (code > 0x7f) n += code > 0x7ff ? 2 : 1;
    }
    return n;
  }

  /* --- sending ------------------------------------------------------------------------------------------ */

  function record(event, urgent) {
    queue.push(event);
    // A full batch goes at once, so the queue stays small whatever the page does.
    if (urgent || queue.length >= MAX_EVENTS) flush(false);
    else if (timer === null) timer = setTimer(flushLater, DELAY);
  }

  function flushLater() {
    timer = null;
    flush(false);
  }

  // Send everything queued: at most MAX_EVENTS events and MAX_BODY bytes per request. Keepalive requests
  // (sendBeacon) share the browser's 64 KiB in-flight quota with the page's own, the tag's among them: while
  // the page lives, at most KEEPALIVE bytes of ours per flush take it, the rest goes as ordinary requests.
  // When the page is leaving only keepalive requests survive, so everything takes it.
  function flush(leaving) {
    try {
      if (timer !== null) clearTimer(timer);
      timer = null;
      if (!queue.length) return;
      if (asking && !leaving) {
        deferred = true;
        return;
      }
      var events = queue;
      queue = [];
      // The page's own origin, spelled out: a <base href> elsewhere must not redirect a relative URL.
      var url = location.protocol + "//" + location.host + PATH + query;
      var head = '{"v":1,"page":' + stringify(page) + ',"url":' + stringify(cut(String(location.href), MAX_URL));
      var room = MAX_BODY - byteLength(head) - 40;
      var keepalive = leaving ? Infinity : KEEPALIVE;
      var batch = [];
      var size = 0;
      for (var i = 0; i < events.length; i++) {
        var json = stringify(events[i]);
        var bytes = byteLength(json) + 1;
        if (batch.length && (batch.length >= MAX_EVENTS || size + bytes > room)) {
          keepalive = sendBatch(url, head, batch, keepalive);
          batch = [];
          size = 0;
        }
        batch.push(json);
        size += bytes;
      }
      sendBatch(url, head, batch, keepalive);
    } catch (e) {
      /* never the page's problem */
    }
  }

  // Send one request; returns the keepalive bytes left for this flush.
  function sendBatch(url, head, batch, keepalive) {
    var body = head + ',"sent":' + now() + ',"events":[' + batch.join(",") + "]}";
    var left = keepalive - byteLength(body);
    send(url, body, left >= 0);
    return left;
  }

  function send(url, body, keepalive) {
    try {
      // text/plain keeps it a simple request (no preflight); sendBeacon survives the page going away.
      if (keepalive && beacon.call(navigator, url, new NativeBlob([body], { type: "text/plain" })) === true) return;
    } catch (e) {
      /* no sendBeacon: fetch below */
    }
    post(url, body, keepalive);
  }

  function post(url, body, keepalive) {
    if (typeof nativeFetch !== "function") return;
    try {
      nativeFetch(url, {
        method: "POST",
        body: body,
        keepalive: keepalive,
        credentials: "omit",
        headers: { "Content-Type": "text/plain" }
      }).then(null, function () {
        // A keepalive request the browser refused (its quota is full): once more as an ordinary one.
        if (keepalive) post(url, body, false);
      });
    } catch (e) {
      /* fetch refused the request outright */
    }
  }

  /* --- pushes --------------------------------------------------------------------------------------------- */

  // A JSON-safe copy of page data: page objects may have cycles, DOM nodes, functions, getters that throw.
  // `budget.left` below zero means "too large": the caller then keeps only the top-level scalars.
  function copy(value, depth, path, budget) {
    if (--budget.left < 0) return undefined;
    var type = typeof value;
    if (value === null || type === "boolean") return value;
    if (type === "number") return isFinite(value) ? value : null;
    if (type === "string") {
      if (value.length > MAX_DATA) budget.left = -1;
      return value;
    }
    if (type === "bigint") return String(value);
    if (type !== "object") return undefined; // functions, symbols, undefined: JSON leaves them out
    if (path.indexOf(value) >= 0) return "[cycle]";
    if (depth >= MAX_DEPTH) return "[deep]";
    if (typeof value.nodeType === "number" && typeof value.nodeName === "string") return "[node " + value.nodeName + "]";
    if (value.window === value) return "[window]";
    var array = isArray(value);
    if (!array && typeof value.toJSON === "function") return copy(value.toJSON(), depth + 1, path, budget);
    var names = array ? null : keys(value);
    var out = array ? [] : {};
    path.push(value);
    try {
      var count = array ? value.length : names.length;
      for (var i = 0; i < count && budget.left >= 0; i++) {
        var item;
        try {
          item = copy(array ? value[i] : value[names[i]], depth + 1, path, budget);
        } catch (e) {
          item = undefined; // a getter that throws: left out, like a function
        }
        if (array) out.push(item === undefined ? null : item);
        else if (item !== undefined) out[names[i]] = item;
      }
    } finally {
      path.pop();
    }
    return out;
  }

  // Data too large (or unreadable): what fits in MAX_DATA of its top-level strings, numbers, booleans, nulls.
  function scalars(data) {
    var out = {};
    var size = 2;
    var names = [];
    try {
      names = keys(data);
    } catch (e) {
      /* unreadable: nothing kept */
    }
    for (var i = 0; i < names.length && i < MAX_NODES && size < MAX_DATA; i++) {
      try {
        var value = data[names[i]];
        var type = typeof value;
        if (type === "string") value = cut(value, MAX_SCALAR);
        else if (type === "number") value = isFinite(value) ? value : null;
        else if (value !== null && type !== "boolean") continue;
        var bytes = byteLength(stringify(names[i]) + ":" + stringify(value)) + 1;
        if (size + bytes <= MAX_DATA) {
          out[names[i]] = value;
          size += bytes;
        }
      } catch (e) {
        /* a getter that throws: left out */
      }
    }
    return out;
  }

  // The push's data as sent: a copy of an object; anything else (missing, array, primitive) becomes {}.
  function pushData(data, event) {
    if (!isObject(data) || typeof data === "function" || isArray(data)) return {};
    var budget = { left: MAX_NODES };
    try {
      var result = copy(data, 0, [], budget);
      if (budget.left >= 0 && isObject(result) && !isArray(result) && byteLength(stringify(result)) <= MAX_DATA) {
        return result;
      }
    } catch (e) {
      /* unreadable somewhere: cut to scalars below */
    }
    event.truncated = true;
    return scalars(data);
  }

  // Queue one pushed element. A consent change is sent at once: before the push reaches the tag, so the proxy
  // has it before the tag's own requests.
  function recordPush(item, early) {
    if (early && isObject(item) && recent.indexOf(item) >= 0) return;
    var event = { t: now(), type: "push", name: "", data: {} };
    if (isObject(item)) {
      var name = item.name;
      if (typeof name === "string") event.name = cut(name, MAX_NAME);
      event.data = pushData(item.data, event);
      recent.push(item);
      if (recent.length > 200) recent.shift();
    }
    if (early) event.early = true;
    record(event, event.name === "ConsentChanged");
  }

  // Make `push` of a layer an accessor: the setter keeps the function the page or the tag assigns (the inner
  // push), the getter hands out a wrapper that records, then calls that function with the same `this` and
  // arguments and returns its result. Works whether the tag replaces push before or after us.
  function watchPush(layer) {
    var own = ownProperty(layer, "push");
    // Someone else's accessor, or a push that cannot be replaced: left alone.
    if (own && (own.get || own.set || !own.configurable || !own.writable)) return;
    var inner = layer.push; // the tag's own push if it came first, else Array.prototype.push
    var hidden = !own; // Array.prototype's push: no own property to see until the page or the tag sets one
    var wrappers = []; // [inner, wrapper] pairs: the same function always gets the same wrapper
    var depth = 0;
    var current = null;

    function wrap(fn) {
      for (var i = 0; i < wrappers.length; i++) {
        if (wrappers[i][0] === fn || wrappers[i][1] === fn) return wrappers[i][1];
      }
      var wrapper = function () {
        // A tag that came after us kept the wrapper it replaced and calls it from its own push: that push is
        // recorded already. Only the current wrapper, or any wrapper called from outside a push, records.
        if (wrapper === current || depth === 0) {
          try {
            for (var j = 0; j < arguments.length; j++) recordPush(arguments[j], false);
          } catch (e) {
            /* never the page's problem */
          }
        }
        depth++;
        try {
          return fn.apply(this, arguments); // its result, and its exception, reach the caller unchanged
        } finally {
          depth--;
        }
      };
      wrappers.push([fn, wrapper]);
      return wrapper;
    }

    current = typeof inner === "function" ? wrap(inner) : null;
    define(layer, "push", {
      configurable: true,
      enumerable: own ? own.enumerable : false,
      get: function () {
        return current || inner; // not a function (null, a number): exactly what was set
      },
      set: function (value) {
        inner = value;
        current = typeof value === "function" ? wrap(value) : null;
        if (hidden) {
          hidden = false; // an assigned property is enumerable: so is ours from now on
          try {
            define(layer, "push", { enumerable: true });
          } catch (e) {
            /* cosmetic only */
          }
        }
      }
    });
  }

  function watchLayer(layer) {
    if (!isObject(layer) || hooked.indexOf(layer) >= 0) return;
    hooked.push(layer);
    // What the page pushed before we got here (the layer existed, or was set with elements): early.
    if (isArray(layer)) for (var i = 0; i < layer.length; i++) recordPush(layer[i], true);
    watchPush(layer);
  }

  // Replace a plain data property (or an absent one) of `owner` by a getter and setter that behave the same
  // (the getter returns exactly what was last set) and tell `found` about every value. An absent property
  // stays out of Object.keys until the page sets it. The page's own accessors and locked properties are left
  // alone; only their current value is watched.
  function watchProperty(owner, name, found) {
    var own = ownProperty(owner, name);
    if ((own && (own.get || own.set || !own.configurable || !own.writable)) || (!own && name in owner)) {
      found(owner[name]);
      return;
    }
    var value = own ? own.value : undefined;
    var hidden = !own;
    define(owner, name, {
      configurable: true,
      enumerable: own ? own.enumerable : false,
      get: function () {
        return value;
      },
      set: function (next) {
        value = next;
        safely(function () {
          if (hidden) {
            hidden = false; // an assigned property is enumerable: so is ours from now on
            define(owner, name, { enumerable: true });
          }
        });
        safely(function () {
          found(next);
        });
      }
    });
    found(value);
  }

  function watchTracking(Y) {
    if (!isObject(Y) || hooked.indexOf(Y) >= 0) return;
    hooked.push(Y);
    try {
      watchProperty(Y, "eventLayer", watchLayer);
    } catch (e) {
      // Y cannot take a new property (frozen): watch the layer it has.
      watchLayer(Y.eventLayer);
    }
  }

  /* --- navigation ----------------------------------------------------------------------------------------- */

  function navigated(how) {
    try {
      record({ t: now(), type: "navigation", how: how, url: cut(location.pathname + location.search, MAX_URL) });
    } catch (e) {
      /* never the page's problem */
    }
  }

  function watchHistory(how) {
    var original = history[how];
    if (typeof original !== "function") return;
    history[how] = function () {
      var result = original.apply(this, arguments); // throws (a bad URL) exactly as before, and records nothing
      navigated(how);
      return result;
    };
  }

  /* --- start ----------------------------------------------------------------------------------------------- */

  function safely(step) {
    try {
      step();
    } catch (e) {
      /* one piece failing leaves the others working */
    }
  }

  safely(function () {
    record({ t: now(), type: "page" });
  });
  safely(function () {
    watchProperty(window, "Y_TRACKING", watchTracking);
  });
  safely(function () {
    watchHistory("pushState");
    watchHistory("replaceState");
  });
  safely(function () {
    window.addEventListener("popstate", function () {
      navigated("popstate");
    });
  });
  safely(function () {
    // The tag got a consent reference; its value is none of our business.
    window.addEventListener("profiletag_consentReferenceLoaded", function () {
      safely(function () {
        record({ t: now(), type: "reference" });
      });
    });
  });
  safely(function () {
    // Everything left leaves with the page (pagehide also covers the back/forward cache).
    window.addEventListener("pagehide", function () {
      flush(true);
    });
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "hidden") flush(true);
    });
  });
})();
