/* The stand-in storefront: renders pages, keeps the shopper's PROFILE consent and feeds the Profile Tag's data
   layer (window.Y_TRACKING.eventLayer).

   Accelerator style: one page per request, its data rendered in by the server; consent in the
   anonymous-consents cookie, which every later storefront request carries. Every event is pushed; the tag
   drops what consent does not allow.
   Spartacus style: a single-page app; pages come from the Commerce API (OCC); consent lives in browser
   storage and travels to the API as the X-Anonymous-Consents header; the tag's consent reference (from its
   profiletag_consentReferenceLoaded event, or localStorage "profiletag" at start) travels as
   X-Consent-Reference. Like Spartacus' own tracking service, it pushes nothing but consent and carousel events
   until consent is given. A shopper can sign in (OAuth password grant): then every OCC call carries the bearer
   token, user calls go to /users/current/..., and the account's consent decides, whatever the anonymous one
   says.
   Spartacus style may register a service worker (settings.serviceWorker), which then serves the shell.
   Both styles: the home page may show a merchandising carousel (settings.carousel) from the tenant's strategy
   service, asked with consent-reference while a reference is known.

   window.standinStorefront tells a scripted shopper when a view is ready (a new document or a new route,
   carousel included) and when a consent change or sign-in has finished (busy false). */
(function () {
  "use strict";

  var settings = JSON.parse(document.getElementById("standin-settings").textContent);
  var spa = settings.mode === "spartacus";
  var TEMPLATE = settings.consentTemplate;
  var STORAGE_KEY = "spartacus-anonymous-consents";
  var CART_KEY = "spartacus-cart";
  var AUTH_KEY = "spartacus-auth";
  var TAG_KEY = "profiletag"; // the tag's own storage: {"cr": {"<site>-consentReference": {consentReference}}}
  var REFERENCE_KEY = settings.siteId + "-consentReference";
  var ALWAYS_PUSHED = { ConsentChanged: true, CarouselViewed: true, CarouselClicked: true };
  var view = (window.standinStorefront = {
    id: Math.random().toString(36).slice(2), views: 0, type: "", busy: true, signedIn: false, consentReference: null
  });

  /* --- the Profile Tag and its data layer --------------------------------------------------------------- */
  var Y = (window.Y_TRACKING = window.Y_TRACKING || {});
  Y.eventLayer = Y.eventLayer || [];
  Y.q = Y.q || [];
  Y.q.push([{ tenant: settings.tenant, siteId: settings.siteId, spa: spa, configUrl: settings.configUrl }]);
  var tag = document.createElement("script");
  tag.src = settings.tagUrl;
  tag.async = true;
  document.head.appendChild(tag);

  function push(name, data) {
    // Spartacus' tracking service passes page and cart events to the tag only while consent is given.
    if (spa && !ALWAYS_PUSHED[name] && !granted()) return;
    Y.eventLayer.push({ name: name, data: data || {} });
  }

  /* --- consent ------------------------------------------------------------------------------------------- */
  var account = null; // signed in (Spartacus style): {token, state: "GIVEN" | "WITHDRAWN" | null}

  function readCookie(name) {
    var parts = document.cookie ? document.cookie.split("; ") : [];
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (parts[i].slice(0, eq) === name) return parts[i].slice(eq + 1);
    }
    return null;
  }

  function consents() {
    var raw = spa ? window.localStorage.getItem(STORAGE_KEY) : readCookie("anonymous-consents");
    try {
      var list = raw ? JSON.parse(spa ? raw : decodeURIComponent(raw)) : null;
      if (Array.isArray(list)) return list;
    } catch (e) {
      /* unreadable: no decision */
    }
    return [{ templateCode: TEMPLATE, templateVersion: 1, consentState: null }];
  }

  function consentState() {
    var list = consents();
    for (var i = 0; i < list.length; i++) if (list[i] && list[i].templateCode === TEMPLATE) return list[i].consentState;
    return null;
  }

  // The consent in force: a signed-in shopper's account consent where it holds a decision, else the anonymous one
  // (as Spartacus 4.3.8 does after an ordinary sign-in: the anonymous consent reaches the account only at
  // registration, and the storefront keeps going on the anonymous one).
  function effectiveState() {
    return account && account.state ? account.state : consentState();
  }

  function granted() {
    return effectiveState() === "GIVEN";
  }

  function consentChanged(isGranted) {
    // Spartacus forgets the reference at once on a withdrawal; its bug 14105 kept sending the old one.
    if (!isGranted && !settings.staleReference) setReference(null);
    push("ConsentChanged", { granted: isGranted });
  }

  function setConsent(state) {
    if (account) {
      setAccountConsent(state);
      return;
    }
    var list = [{ templateCode: TEMPLATE, templateVersion: 1, consentState: state }];
    if (spa) {
      // Local state only, as Spartacus keeps anonymous consents: no request.
      window.localStorage.setItem(STORAGE_KEY, JSON.stringify(list));
    } else {
      var secure = window.location.protocol === "https:" ? "; Secure" : "";
      document.cookie = "anonymous-consents=" + encodeURIComponent(JSON.stringify(list)) + "; path=/; SameSite=Lax" + secure;
    }
    consentChanged(state === "GIVEN");
    showConsent();
  }

  function setAccountConsent(state) {
    // A registered shopper's consent lives in the account: changing it is a Commerce API call.
    view.busy = true;
    var request = state === "GIVEN"
      ? occResponse("/users/current/consents", {
          method: "POST", form: { consentTemplateId: TEMPLATE, consentTemplateVersion: "1" }
        })
      : occResponse("/users/current/consents/" + encodeURIComponent(TEMPLATE + "-standin"), { method: "DELETE" });
    request.then(function (response) {
      if (!response.ok) throw new Error("consent change refused: " + response.status);
      account.state = state;
      consentChanged(state === "GIVEN");
    }).catch(function () { /* the account keeps its consent */ }).then(function () {
      showConsent();
      view.busy = false;
    });
  }

  function showConsent() {
    var state = effectiveState();
    // A signed-in shopper decided in the account (or will be asked there): no banner.
    document.getElementById("consent-banner").hidden = Boolean(account) || (state !== null && state !== undefined);
    document.getElementById("consent-state").textContent =
      state === "GIVEN" ? "given" : state === "WITHDRAWN" ? "withdrawn" : "not decided";
    document.getElementById("consent-withdraw").hidden = state !== "GIVEN";
    document.getElementById("consent-grant").hidden = state !== "WITHDRAWN";
  }

  document.getElementById("consent-accept").addEventListener("click", function () { setConsent("GIVEN"); });
  document.getElementById("consent-grant").addEventListener("click", function () { setConsent("GIVEN"); });
  document.getElementById("consent-decline").addEventListener("click", function () { setConsent("WITHDRAWN"); });
  document.getElementById("consent-withdraw").addEventListener("click", function () { setConsent("WITHDRAWN"); });

  /* --- the consent reference (as Spartacus' profile tag event service keeps it) ----------------------------- */
  function storedReference() {
    try {
      var meta = JSON.parse(window.localStorage.getItem(TAG_KEY) || '{"cr":{}}');
      var entry = meta && meta.cr && meta.cr[REFERENCE_KEY];
      return (entry && entry.consentReference) || null;
    } catch (e) {
      return null;
    }
  }

  var reference = null;

  function setReference(value) {
    reference = value || null;
    view.consentReference = reference;
  }

  setReference(storedReference());
  window.addEventListener("profiletag_consentReferenceLoaded", function (event) {
    setReference(event.detail && event.detail.consentReference);
  });

  /* --- the Commerce API (Spartacus style) --------------------------------------------------------------- */
  function occResponse(path, options) {
    options = options || {};
    var headers = {
      "X-Anonymous-Consents": encodeURIComponent(JSON.stringify(consents())),
      "X-Profile-Tag-Debug": "false"
    };
    if (reference) headers["X-Consent-Reference"] = reference;
    if (account) headers.Authorization = "Bearer " + account.token;
    var body = options.body;
    if (options.form) body = new URLSearchParams(options.form);
    else if (body) headers["Content-Type"] = "application/json";
    return fetch(settings.occBase + path, { method: options.method || "GET", headers: headers, body: body });
  }

  function occ(path, options) {
    return occResponse(path, options).then(function (response) { return response.json(); });
  }

  function user() {
    return account ? "current" : "anonymous";
  }

  function cartGuid() {
    var guid = window.localStorage.getItem(CART_KEY);
    if (!guid) {
      guid = Math.random().toString(16).slice(2) + Date.now().toString(16);
      window.localStorage.setItem(CART_KEY, guid);
    }
    return guid;
  }

  function occPath(url) {
    var path = url.pathname;
    var match;
    if (path === "/") return "/cms/pages?pageType=ContentPage&pageLabelOrId=homepage";
    if ((match = /^\/c\/([^/]+)$/.exec(path))) return "/products/search?query=" + encodeURIComponent(":relevance:allCategories:" + match[1]);
    if ((match = /^\/p\/([^/]+)$/.exec(path))) return "/products/" + encodeURIComponent(match[1]);
    if (path === "/search") return "/products/search?query=" + encodeURIComponent(url.searchParams.get("text") || "");
    if (path === "/cart") return "/users/" + user() + "/carts/" + cartGuid();
    return null;
  }

  /* --- signing in (Spartacus style) ------------------------------------------------------------------------ */
  function storedToken() {
    try {
      var auth = JSON.parse(window.localStorage.getItem(AUTH_KEY) || "null");
      return (auth && auth.access_token) || null;
    } catch (e) {
      return null;
    }
  }

  // The account's consents; a token the API refuses signs the shopper out.
  function loadAccount(token) {
    account = { token: token, state: null };
    return occResponse("/users/current/consenttemplates").then(function (response) {
      if (response.status === 401) throw new Error("signed out");
      return response.json();
    }).then(function (answer) {
      (answer.consentTemplates || []).forEach(function (template) {
        var current = template.id === TEMPLATE && template.currentConsent;
        if (current) account.state = current.consentGivenDate && !current.consentWithdrawnDate ? "GIVEN" : "WITHDRAWN";
      });
    }).catch(function () {
      account = null;
      window.localStorage.removeItem(AUTH_KEY);
    }).then(showUser);
  }

  function showUser() {
    view.signedIn = Boolean(account);
    document.getElementById("sign-in").hidden = !spa || Boolean(account);
    var signedIn = document.getElementById("signed-in");
    signedIn.hidden = !account;
    signedIn.title = account ? settings.account : "";
  }

  function signIn() {
    view.busy = true;
    var wasGranted = granted();
    var form = new URLSearchParams({
      client_id: "mobile_android", client_secret: "secret", grant_type: "password",
      username: settings.account, password: "standin"
    });
    fetch(settings.tokenUrl, { method: "POST", body: form, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("sign-in refused: " + response.status);
        return response.json();
      })
      .then(function (token) {
        window.localStorage.setItem(AUTH_KEY, JSON.stringify(token));
        return loadAccount(token.access_token);
      })
      .then(function () {
        // The account's consent now decides: the tag hears of a change at once (no reload needed).
        if (granted() !== wasGranted) consentChanged(granted());
        showConsent();
      })
      .catch(function () { /* still anonymous */ })
      .then(function () { view.busy = false; });
  }

  document.getElementById("sign-in").addEventListener("click", signIn);

  /* --- rendering ------------------------------------------------------------------------------------------ */
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) { node.setAttribute(name, attrs[name]); });
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function price(value) {
    return "$" + Number(value).toFixed(2);
  }

  function productList(products) {
    var list = el("ul", { class: "products" });
    products.forEach(function (p) {
      var item = el("li");
      item.appendChild(el("a", { href: "/p/" + p.sku, class: "product-link", "data-sku": p.sku }, p.name));
      item.appendChild(el("span", { class: "price" }, " " + price(p.price)));
      list.appendChild(item);
    });
    return list;
  }

  function setCart(cart) {
    document.getElementById("cart-count").textContent = String(cart.totalItems || 0);
  }

  // Once the tag has handed the click to the network (or a second has passed), go on: a scripted shopper's next
  // view then starts after the CarouselClicked event was sent, as it does in Spartacus style.
  function afterTracking(then) {
    var deadline = Date.now() + 1000;
    (function wait() {
      var status = Y.standin;
      if (!status || (status.settled && status.settled()) || Date.now() > deadline) then();
      else window.setTimeout(wait, 10);
    })();
  }

  // The merchandising carousel: the strategy's products, CarouselViewed once rendered; done() in every case.
  function carousel(main, renderId, done) {
    var c = settings.carousel;
    if (!c) {
      done();
      return;
    }
    var box = el("section", { id: "carousel", "aria-label": c.carouselName });
    box.hidden = true;
    main.appendChild(box);
    var headers = {};
    if (reference) headers["consent-reference"] = reference;
    fetch(c.strategyUrl, { headers: headers, credentials: "omit" })
      .then(function (response) {
        if (!response.ok) throw new Error("strategy answered " + response.status);
        return response.json();
      })
      .then(function (answer) {
        if (renderId !== renders) return; // the shopper has moved on
        var products = answer.products || [];
        var mixCardId = (answer.metadata && answer.metadata.mixcardId) || "";
        var base = { carouselId: c.carouselId, carouselName: c.carouselName, strategyId: c.strategyId, mixCardId: mixCardId };
        box.appendChild(el("h2", {}, c.carouselName));
        var list = el("ul", { class: "carousel" });
        products.forEach(function (p) {
          var item = el("li");
          var link = el("a", { href: "/p/" + p.id, class: "carousel-item", "data-sku": p.id }, p.name);
          link.addEventListener("click", function (event) {
            if (event.ctrlKey || event.metaKey) return;
            push("CarouselClicked", Object.assign({}, base, { sku: p.id, imageUrl: p.mainImage || p.thumbNailImage || "" }));
            if (spa) return; // the single-page app's own link handling opens the product
            event.preventDefault();
            view.busy = true;
            afterTracking(function () { window.location.href = link.href; });
          });
          item.appendChild(link);
          item.appendChild(el("span", { class: "price" }, " " + price(p.price)));
          list.appendChild(item);
        });
        box.appendChild(list);
        box.hidden = false;
        push("CarouselViewed", Object.assign({}, base, { productSkus: products.map(function (p) { return p.id; }) }));
      })
      .catch(function () { box.hidden = true; })
      .then(function () { if (renderId === renders) done(); });
  }

  var renders = 0;

  function render(page) {
    var renderId = ++renders;
    var main = document.getElementById("main");
    main.textContent = "";
    var nav = document.getElementById("categories");
    nav.textContent = "";
    (page.categories || []).forEach(function (c) {
      nav.appendChild(el("a", { href: "/c/" + c.code, class: "category-link" }, c.name));
    });
    if (page.cart) setCart(page.cart);
    function done() {
      view.type = page.type;
      view.views += 1;
      view.busy = false;
    }
    if (page.type === "home") {
      main.appendChild(el("h1", {}, "Welcome to Stand-in Electronics"));
      main.appendChild(el("h2", {}, "Featured products"));
      main.appendChild(productList(page.products));
      push("HomePageViewed", {});
      carousel(main, renderId, done); // the view is ready once the carousel is (or is not) there
      return;
    } else if (page.type === "category") {
      main.appendChild(el("h1", {}, page.category.name));
      main.appendChild(productList(page.products));
      push("CategoryPageViewed", { productCategory: page.category.code, productCategoryName: page.category.name });
    } else if (page.type === "product") {
      var p = page.product;
      main.appendChild(el("h1", {}, p.name));
      main.appendChild(el("p", { class: "price" }, price(p.price)));
      main.appendChild(el("p", { class: "muted" }, "SKU " + p.sku + " · " + p.category.name));
      var add = el("button", { type: "button", id: "add-to-cart" }, "Add to cart");
      add.addEventListener("click", function () { addToCart(p); });
      main.appendChild(add);
      main.appendChild(el("p", { id: "added", role: "status" }));
      push("ProductDetailsPageViewed", {
        productSku: p.sku, productName: p.name, productPrice: p.price, productCategory: p.category.code,
        productCategoryName: p.category.name, categories: [p.category.code]
      });
    } else if (page.type === "search") {
      main.appendChild(el("h1", {}, page.products.length + " results for “" + page.text + "”"));
      main.appendChild(productList(page.products));
      document.querySelector("#search input").value = page.text;
      push("KeywordSearch", { searchTerm: page.text, numResults: page.products.length });
    } else if (page.type === "cart") {
      main.appendChild(el("h1", {}, "Your cart"));
      var list = el("ul", { class: "cart" });
      page.cart.entries.forEach(function (e) {
        list.appendChild(el("li", {}, e.quantity + " × " + e.name + " " + price(e.price)));
      });
      main.appendChild(list);
      main.appendChild(el("p", {}, "Total " + price(page.cart.totalPrice)));
      push("CartPageViewed", {});
      push("CartSnapshot", { cart: page.cart });
    } else {
      main.appendChild(el("h1", {}, "Page not found"));
    }
    done();
  }

  function addToCart(p) {
    view.busy = true;
    var request = spa
      ? occ("/users/" + user() + "/carts/" + cartGuid() + "/entries", {
          method: "POST", body: JSON.stringify({ product: { code: p.sku }, quantity: 1 })
        })
      : fetch("/cart/add", {
          method: "POST", body: new URLSearchParams({ productCodePost: p.sku, qty: "1" }), credentials: "same-origin"
        }).then(function (response) { return response.json(); });
    request.then(function (answer) {
      setCart(answer.cart);
      document.getElementById("added").textContent = "Added " + p.name + " to your cart.";
      push("AddedToCart", {
        productSku: p.sku, productName: p.name, productPrice: p.price, productQty: answer.entry.quantity,
        productCategory: p.category.code, productCategoryName: p.category.name, categories: [p.category.code],
        cartId: answer.cart.guid, cartCode: answer.cart.code
      });
    }).catch(function () {
      document.getElementById("added").textContent = "Could not add to cart.";
    }).then(function () { view.busy = false; });
  }

  /* --- navigation --------------------------------------------------------------------------------------------- */
  function load(url) {
    view.busy = true;
    var path = occPath(url);
    var answer = path ? occ(path) : Promise.resolve({ type: "notfound" });
    answer.catch(function () { return { type: "notfound" }; }).then(function (page) {
      if (!page.type) page = { type: "notfound" };
      render(page);
    });
  }

  if (spa) {
    document.addEventListener("click", function (event) {
      var link = event.target.closest && event.target.closest("a[href]");
      if (!link || link.origin !== window.location.origin || event.ctrlKey || event.metaKey) return;
      event.preventDefault();
      history.pushState({}, "", link.href);
      push("Navigated", { url: link.pathname });
      load(new URL(link.href));
    });
    document.getElementById("search").addEventListener("submit", function (event) {
      event.preventDefault();
      var url = new URL("/search?text=" + encodeURIComponent(event.target.elements.text.value), window.location.href);
      history.pushState({}, "", url.href);
      push("Navigated", { url: url.pathname });
      load(url);
    });
    window.addEventListener("popstate", function () { load(new URL(window.location.href)); });
  }

  function start() {
    showUser();
    showConsent();
    // The storefront tells the tag about consent the shopper gave on an earlier page before anything else;
    // Spartacus tells it "not granted" too, for a shopper who never decided as for one who withdrew.
    if (granted()) push("ConsentChanged", { granted: true });
    else if (spa) push("ConsentChanged", { granted: false });
    if (spa) {
      // Spartacus loads the anonymous consent templates at start (with the bearer token when signed in).
      occResponse("/users/anonymous/consenttemplates").catch(function () { /* nothing depends on it here */ });
      load(new URL(window.location.href));
    } else {
      render(settings.page);
    }
  }

  document.getElementById("mode").textContent = spa ? "Spartacus-style storefront" : "Accelerator-style storefront";
  // Spartacus with PWA support registers Angular's service worker as the app starts (registerImmediately).
  if (settings.serviceWorker && navigator.serviceWorker) {
    navigator.serviceWorker.register(settings.serviceWorker, { scope: "/" }).catch(function () { /* no worker */ });
  }
  var token = spa ? storedToken() : null;
  if (token) loadAccount(token).then(start); // a shopper signed in on an earlier visit: the account decides
  else start();
})();
