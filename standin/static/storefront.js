/* The stand-in storefront: renders pages, keeps the shopper's PROFILE consent and feeds the Profile Tag's data
   layer (window.Y_TRACKING.eventLayer).

   Accelerator style: one page per request, its data rendered in by the server; consent in the
   anonymous-consents cookie, which every later storefront request carries.
   Spartacus style: a single-page app; pages come from the Commerce API (OCC); consent lives in browser
   storage and travels to the API as the X-Anonymous-Consents header.

   window.standinStorefront tells a scripted shopper when a view is ready (a new document or a new route). */
(function () {
  "use strict";

  var settings = JSON.parse(document.getElementById("standin-settings").textContent);
  var spa = settings.mode === "spartacus";
  var TEMPLATE = settings.consentTemplate;
  var STORAGE_KEY = "spartacus-anonymous-consents";
  var CART_KEY = "spartacus-cart";
  var view = (window.standinStorefront = { id: Math.random().toString(36).slice(2), views: 0, type: "", busy: true });

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
    Y.eventLayer.push({ name: name, data: data || {} });
  }

  /* --- consent ------------------------------------------------------------------------------------------- */
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

  function setConsent(state) {
    var list = [{ templateCode: TEMPLATE, templateVersion: 1, consentState: state }];
    if (spa) {
      window.localStorage.setItem(STORAGE_KEY, JSON.stringify(list));
    } else {
      var secure = window.location.protocol === "https:" ? "; Secure" : "";
      document.cookie = "anonymous-consents=" + encodeURIComponent(JSON.stringify(list)) + "; path=/; SameSite=Lax" + secure;
    }
    push("ConsentChanged", { granted: state === "GIVEN" });
    showConsent();
  }

  function showConsent() {
    var state = consentState();
    document.getElementById("consent-banner").hidden = state !== null && state !== undefined;
    document.getElementById("consent-state").textContent =
      state === "GIVEN" ? "given" : state === "WITHDRAWN" ? "withdrawn" : "not decided";
    document.getElementById("consent-withdraw").hidden = state !== "GIVEN";
    document.getElementById("consent-grant").hidden = state !== "WITHDRAWN";
  }

  document.getElementById("consent-accept").addEventListener("click", function () { setConsent("GIVEN"); });
  document.getElementById("consent-grant").addEventListener("click", function () { setConsent("GIVEN"); });
  document.getElementById("consent-decline").addEventListener("click", function () { setConsent("WITHDRAWN"); });
  document.getElementById("consent-withdraw").addEventListener("click", function () { setConsent("WITHDRAWN"); });

  /* --- the Commerce API (Spartacus style) --------------------------------------------------------------- */
  function occ(path, options) {
    options = options || {};
    var headers = { "X-Anonymous-Consents": encodeURIComponent(JSON.stringify(consents())) };
    if (options.body) headers["Content-Type"] = "application/json";
    return fetch(settings.occBase + path, { method: options.method || "GET", headers: headers, body: options.body })
      .then(function (response) { return response.json(); });
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
    if (path === "/cart") return "/users/anonymous/carts/" + cartGuid();
    return null;
  }

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

  function render(page) {
    var main = document.getElementById("main");
    main.textContent = "";
    var nav = document.getElementById("categories");
    nav.textContent = "";
    (page.categories || []).forEach(function (c) {
      nav.appendChild(el("a", { href: "/c/" + c.code, class: "category-link" }, c.name));
    });
    if (page.cart) setCart(page.cart);
    if (page.type === "home") {
      main.appendChild(el("h1", {}, "Welcome to Stand-in Electronics"));
      main.appendChild(el("h2", {}, "Featured products"));
      main.appendChild(productList(page.products));
      push("HomePageViewed", {});
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
    view.type = page.type;
    view.views += 1;
    view.busy = false;
  }

  function addToCart(p) {
    view.busy = true;
    var request = spa
      ? occ("/users/anonymous/carts/" + cartGuid() + "/entries", {
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

  document.getElementById("mode").textContent = spa ? "Spartacus-style storefront" : "Accelerator-style storefront";
  showConsent();
  // The storefront tells the tag about consent the shopper gave on an earlier page before anything else.
  if (consentState() === "GIVEN") push("ConsentChanged", { granted: true });
  if (spa) load(new URL(window.location.href));
  else render(settings.page);
})();
