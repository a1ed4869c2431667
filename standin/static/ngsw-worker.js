/* The stand-in's service worker: Angular's ngsw-worker.js (@angular/service-worker 12.2.17) in miniature, with the
   rules that matter to a proxy in front of it (its own code, written from the real worker's behaviour):

   - On activation it claims the open pages and initializes: it fetches /ngsw.json?ngsw-cache-bust=<random>, takes
     the SHA-1 of the manifest's JSON as the version's hash, and fetches every URL of its prefetch asset group,
     checking each body's SHA-1 against the manifest's hashTable; on a mismatch it fetches the URL again with
     ngsw-cache-bust, and if that still does not match the version is broken: state EXISTING_CLIENTS_ONLY,
     "Degraded due to: Hash mismatch (cacheBustedFetchFromNetwork): ...".
   - While NORMAL, a navigation (mode "navigate", accepting text/html, matching the manifest's navigationUrls) is
     answered with the cached index.html, and the asset group's files from the cache: none of it reaches the
     network. While degraded, new navigations are passed to the network with fetch(event.request) (the browser
     sends those with Sec-Fetch-Mode: navigate and Sec-Fetch-Dest: empty).
   - After a navigation it checks for an update: it fetches the manifest again (cache-busted) and, when its hash
     changed, installs the new version with the same checks; a failure there degrades it as well ("Degraded due to
     failed initialization: ..."), a success returns it to NORMAL. Angular waits until the worker has been idle for
     5 s before the check; this one waits UPDATE_DELAY_MS after the navigation.
   - /ngsw/state answers with its debug page ("Driver state: NORMAL ((nominal))").
   What it leaves out: data groups, push, notifications, lazy asset groups, several versions serving several
   clients, and the requests Angular passes through itself that this one leaves to the browser (other origins and
   other methods; same-origin GETs it passes on with fetch(event.request), as Angular does). */
"use strict";

var DRIVER_VERSION = "12.2.17 (clickwatch stand-in)";
var CONTROL = "ngsw:/:db:control";
var UPDATE_DELAY_MS = 1000;
var driver = { state: "NORMAL", why: "(nominal)", latestHash: null, manifest: null, lastUpdateCheck: null };
var debugLog = [];
var initialized = null;
var updateScheduled = false;

function log(message) {
  debugLog.push("[" + new Date().toISOString() + "] " + message);
  if (debugLog.length > 50) debugLog.shift();
}

function hex(buffer) {
  return Array.prototype.map.call(new Uint8Array(buffer), function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
}

function sha1(buffer) {
  return crypto.subtle.digest("SHA-1", buffer).then(hex);
}

function cacheBust(url) {
  return url + (url.indexOf("?") === -1 ? "?" : "&") + "ngsw-cache-bust=" + Math.random();
}

function assetCache(hash) {
  return "ngsw:/:" + hash + ":assets:app:cache";
}

function save() {
  return caches.open(CONTROL).then(function (cache) {
    return cache.put("/latest", new Response(JSON.stringify(driver), { headers: { "Content-Type": "application/json" } }));
  });
}

function fetchManifest() {
  return fetch(cacheBust("/ngsw.json")).then(function (response) {
    if (!response.ok) throw new Error("Manifest fetch failed! (status: " + response.status + ")");
    driver.lastUpdateCheck = Date.now();
    return response.text();
  }).then(function (text) {
    var manifest = JSON.parse(text);
    return sha1(new TextEncoder().encode(JSON.stringify(manifest))).then(function (hash) {
      return { manifest: manifest, hash: hash };
    });
  });
}

function prefetched(manifest) {
  var urls = [];
  (manifest.assetGroups || []).forEach(function (group) {
    if (group.installMode === "prefetch") urls = urls.concat(group.urls);
  });
  return urls;
}

// A hashed file from the network, checked against the manifest (a second, cache-busted try before giving up).
function hashedFetch(url, expected) {
  return fetch(url).then(function (response) {
    return response.clone().arrayBuffer().then(sha1).then(function (hash) {
      if (!response.ok || hash === expected) return response;
      return fetch(cacheBust(url)).then(function (busted) {
        return busted.clone().arrayBuffer().then(sha1).then(function (bustedHash) {
          if (busted.ok && bustedHash !== expected) {
            throw new Error("Hash mismatch (cacheBustedFetchFromNetwork): " + new URL(url, self.location.href).href +
              ": expected " + expected + ", got " + bustedHash + " (after cache busting)");
          }
          return busted;
        });
      });
    });
  }).then(function (response) {
    if (!response.ok) throw new Error("Failed to retrieve hashed resource from the server. (URL: " + url + ")");
    return response;
  });
}

function installVersion(manifest, hash) {
  return caches.open(assetCache(hash)).then(function (cache) {
    return Promise.all(prefetched(manifest).map(function (url) {
      return hashedFetch(url, manifest.hashTable[url]).then(function (response) { return cache.put(url, response); });
    }));
  });
}

function initialize() {
  if (initialized) return initialized;
  initialized = caches.open(CONTROL).then(function (cache) {
    return cache.match("/latest");
  }).then(function (stored) {
    return stored ? stored.json() : null;
  }).then(function (state) {
    if (state && state.latestHash) {
      driver = state;
      return null;
    }
    return fetchManifest().then(function (latest) {
      driver.manifest = latest.manifest;
      driver.latestHash = latest.hash;
      log("initialized version " + latest.hash);
      return installVersion(latest.manifest, latest.hash).catch(function (error) {
        driver.state = "EXISTING_CLIENTS_ONLY";
        driver.why = "Degraded due to: " + error.message;
        log(driver.why);
      });
    }).then(save);
  }).catch(function (error) {
    driver.state = "SAFE_MODE";
    driver.why = "Initialization failed due to error: " + error.message;
    log(driver.why);
  });
  return initialized;
}

function checkForUpdate() {
  return fetchManifest().then(function (latest) {
    if (latest.hash === driver.latestHash) {
      log("check for update: no update (manifest " + latest.hash + ")");
      return save();
    }
    log("update found: " + latest.hash);
    return installVersion(latest.manifest, latest.hash).then(function () {
      driver.manifest = latest.manifest;
      driver.latestHash = latest.hash;
      if (driver.state === "EXISTING_CLIENTS_ONLY") {
        driver.state = "NORMAL";
        driver.why = "(nominal)";
      }
    }, function (error) {
      driver.state = "EXISTING_CLIENTS_ONLY";
      driver.why = "Degraded due to failed initialization: " + error.message;
      log(driver.why);
    }).then(save);
  }).catch(function (error) {
    log("update check failed: " + error.message);
  });
}

function acceptsHtml(request) {
  return (request.headers.get("Accept") || "").indexOf("text/html") !== -1;
}

function isNavigation(request, path) {
  if (request.mode !== "navigate" || !acceptsHtml(request)) return false;
  var urls = (driver.manifest && driver.manifest.navigationUrls) || [];
  function matches(spec) { return new RegExp(spec.regex).test(path); }
  return urls.some(function (spec) { return spec.positive && matches(spec); }) &&
    !urls.some(function (spec) { return !spec.positive && matches(spec); });
}

function fromCache(path) {
  var expected = driver.manifest.hashTable[path];
  return caches.open(assetCache(driver.latestHash)).then(function (cache) {
    return cache.match(path).then(function (cached) {
      if (cached) return cached;
      return hashedFetch(path, expected).then(function (response) {
        return cache.put(path, response.clone()).then(function () { return response; });
      });
    });
  });
}

function since(time) {
  if (!time) return "never";
  return ((Date.now() - time) / 1000).toFixed(3) + "s";
}

function debugPage() {
  return initialize().then(function () {
    return self.clients.matchAll().then(function (clients) {
      var text = "NGSW Debug Info:\n\n" +
        "Driver version: " + DRIVER_VERSION + "\n" +
        "Driver state: " + driver.state + " (" + driver.why + ")\n" +
        "Latest manifest hash: " + (driver.latestHash || "none") + "\n" +
        "Last update check: " + since(driver.lastUpdateCheck) + "\n\n" +
        "=== Version " + (driver.latestHash || "none") + " ===\n\n" +
        "Clients: " + clients.map(function (c) { return c.id; }).join(", ") + "\n\n" +
        "=== Idle Task Queue ===\n" +
        "Task queue:\n" + (updateScheduled ? " * check-updates-on-navigation\n" : "") + "\n" +
        "Debug log:\n" + debugLog.join("\n") + "\n";
      return new Response(text, { headers: { "Content-Type": "text/plain" } });
    });
  });
}

self.addEventListener("install", function (event) {
  event.waitUntil(self.skipWaiting());
});

self.addEventListener("activate", function (event) {
  event.waitUntil(self.clients.claim().then(initialize));
});

self.addEventListener("fetch", function (event) {
  var request = event.request;
  var url = new URL(request.url);
  if (url.origin !== self.location.origin || request.method !== "GET") return;
  if (url.pathname === "/ngsw/state") {
    event.respondWith(debugPage());
    return;
  }
  var navigation = request.mode === "navigate";
  if (navigation && !updateScheduled) {
    updateScheduled = true;
    event.waitUntil(initialize().then(function () {
      return new Promise(function (resolve) { setTimeout(resolve, UPDATE_DELAY_MS); });
    }).then(checkForUpdate).then(function () { updateScheduled = false; }));
  }
  event.respondWith(initialize().then(function () {
    if (!driver.manifest || driver.state !== "NORMAL") return fetch(request); // new clients: the network
    var path = url.pathname;
    if (Object.prototype.hasOwnProperty.call(driver.manifest.hashTable, path)) return fromCache(path);
    if (isNavigation(request, path)) return fromCache(driver.manifest.index);
    return fetch(request);
  }).catch(function () {
    return fetch(request);
  }));
});
