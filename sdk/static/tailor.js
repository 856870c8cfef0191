/*! Tailor browser snippet (ES2017, no dependencies).
 * <script async src="https://API/sdk/tailor.js" data-key="DECIDE_ONLY_KEY"></script>
 * Markup (data-tailor-placement, -field, -as, -click, -slots, -item), script attributes,
 * window.tailor and the anti-flicker class: docs/http-api.md, "GET /sdk/tailor.js".
 * Fail-open: on any error or timeout the page keeps its built-in content and order.
 */
(function () {
  'use strict';
  var script = document.currentScript || document.querySelector('script[src*="/sdk/tailor.js"]');
  var attr = function (name) { return script ? script.getAttribute(name) : null; };
  var api = (attr('data-api') || (script ? new URL(script.src, location.href).origin : '')).replace(/\/$/, '');
  var key = attr('data-key') || '';
  var consent = attr('data-consent') !== 'false';
  var timeoutMs = parseInt(attr('data-timeout') || '1000', 10);
  var PLACEMENT = 'data-tailor-placement';
  var SLOTS = 'data-tailor-slots';

  function hex32() {
    var bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return (b + 256).toString(16).slice(1); }).join('');
  }

  function unitId() {
    var given = attr('data-unit');
    if (given) return given;
    var found = document.cookie.match(/(?:^|;\s*)tailor_uid=([0-9a-f]{32})/);
    if (found) return found[1];
    var id = hex32();
    if (consent) document.cookie = 'tailor_uid=' + id + ';path=/;max-age=31536000;SameSite=Lax';
    return id;
  }

  function url(path) { return api + path + (key ? '?key=' + encodeURIComponent(key) : ''); }

  function context() {
    var ctx = {
      page: location.pathname.slice(0, 1024),
      device: matchMedia('(max-width: 767px)').matches ? 'mobile' : 'desktop',
      language: (navigator.language || '').slice(0, 32),
      local_hour: new Date().getHours()
    };
    try { var ref = new URL(document.referrer); ctx.referrer = (ref.origin + ref.pathname).slice(0, 1024); } catch (e) { /* none */ }
    try { Object.assign(ctx, JSON.parse(attr('data-context') || '{}')); } catch (e) { /* keep defaults */ }
    return ctx;
  }

  function apply(root, payload) {
    var targets = Array.prototype.slice.call(root.querySelectorAll('[data-tailor-field]'));
    if (root.hasAttribute('data-tailor-field')) targets.push(root);
    targets.forEach(function (el) {
      var value = payload[el.getAttribute('data-tailor-field')];
      if (value === undefined || value === null) return;
      var as = el.getAttribute('data-tailor-as') || (el.tagName === 'IMG' ? 'src' : 'text');
      value = String(value);
      if (as === 'text') el.textContent = value;
      else if (as === 'class') value.split(/\s+/).filter(Boolean).forEach(function (c) { el.classList.add(c); });
      else if (/^(on|style$|srcdoc$)/i.test(as) || /^\s*(javascript|vbscript|data):/i.test(value)) return;
      else el.setAttribute(as, value);
    });
  }

  function itemsOf(box) {
    return Array.prototype.slice.call(box.querySelectorAll('[data-tailor-item]'));
  }

  // The `slates` entry of a container marked data-tailor-slots: its items as candidates, if any.
  function slateRequest(box) {
    var request = {};
    var slots = parseInt(box.getAttribute(SLOTS), 10);
    if (slots > 0) request.slots = slots;
    var items = itemsOf(box);
    if (items.length) {
      request.candidates = items.map(function (el) {
        var candidate = { id: el.getAttribute('data-tailor-item') };
        try {
          var features = JSON.parse(el.getAttribute('data-tailor-features') || 'null');
          if (features && typeof features === 'object') candidate.features = features;
        } catch (e) { /* no features */ }
        return candidate;
      });
    }
    return request;
  }

  function renderSlate(box, slate) {
    var items = itemsOf(box);
    var template = box.querySelector('template');
    if (items.length) {
      var byId = {};
      items.forEach(function (el) { byId[el.getAttribute('data-tailor-item')] = el; el.hidden = true; });
      slate.forEach(function (s) {
        var el = byId[s.item];
        if (!el) return;
        el.hidden = false;
        el.setAttribute('data-tailor-slot', String(s.slot));
        if (s.payload) apply(el, s.payload);
        el.parentNode.appendChild(el);
      });
    } else if (template && template.content.firstElementChild) {
      box.querySelectorAll('[data-tailor-default]').forEach(function (el) { el.hidden = true; });
      slate.forEach(function (s) {
        var el = template.content.firstElementChild.cloneNode(true);
        el.setAttribute('data-tailor-item', s.item);
        el.setAttribute('data-tailor-slot', String(s.slot));
        if (s.payload) apply(el, s.payload);
        template.parentNode.insertBefore(el, template);
      });
    }
  }

  var unit = unitId();
  var byPlacement = {};
  var tailor = window.tailor = { unit: unit, decision: null, error: null };

  function send(body) {
    var data = JSON.stringify(body);
    if (navigator.sendBeacon && navigator.sendBeacon(url('/v1/outcomes'), data)) return true;
    fetch(url('/v1/outcomes'), { method: 'POST', body: data, keepalive: true, mode: 'cors' }).catch(function () {});
    return false;
  }

  // The outcome's body; sent unless `build` (then returned for the caller to complete).
  function outcome(type, value, placement, properties, slotEl, build) {
    var d = placement ? byPlacement[placement] : null;
    var body = { event_id: hex32(), type: type, unit_id: unit, value: Number(value) || 0 };
    if (tailor.decision) body.decision_id = tailor.decision.decision_id;
    if (d && d.experiment) body.experiment = d.experiment;
    if (properties) body.properties = properties;
    if (d && d.slate && slotEl) {
      body.item = slotEl.getAttribute('data-tailor-item');
      body.slot = parseInt(slotEl.getAttribute('data-tailor-slot'), 10);
    }
    return build ? body : send(body);
  }

  tailor.track = function (type, value, properties, slate) {
    var named = slate || {};
    var body = outcome(type, value, named.placement || null, properties, null, true);
    if (named.item) body.item = String(named.item);
    if (named.slot !== undefined && named.slot !== null) body.slot = parseInt(named.slot, 10);
    return send(body);
  };

  document.addEventListener('click', function (event) {
    var el = event.target && event.target.closest && event.target.closest('[data-tailor-click]');
    if (!el) return;
    var box = el.closest('[' + PLACEMENT + ']');
    var slotEl = el.closest('[data-tailor-slot]');
    if (slotEl && !(box && box.contains(slotEl))) slotEl = null;
    outcome(el.getAttribute('data-tailor-click') || 'click', 0, box && box.getAttribute(PLACEMENT), null, slotEl);
  }, true);

  function finish(answer) {
    document.querySelectorAll('[' + PLACEMENT + ']').forEach(function (el) { el.setAttribute('data-tailor-done', ''); });
    document.documentElement.classList.remove('tailor-hide');
    document.dispatchEvent(new CustomEvent('tailor:decision', { detail: answer }));
    return answer;
  }

  async function decide() {
    var nodes = document.querySelectorAll('[' + PLACEMENT + ']');
    var placements = Array.from(new Set(Array.prototype.map.call(nodes, function (el) { return el.getAttribute(PLACEMENT); })));
    if (!placements.length) return finish(null);
    var abort = new AbortController();
    var slates = {};
    nodes.forEach(function (el) {
      var p = el.getAttribute(PLACEMENT);
      if (el.hasAttribute(SLOTS) && !slates[p]) slates[p] = slateRequest(el);
    });
    var timer = setTimeout(function () { abort.abort(); }, timeoutMs);
    try {
      var body = { unit_id: unit, placements: placements, context: context(), consent: consent };
      if (Object.keys(slates).length) body.slates = slates;
      var response = await fetch(url('/v1/decide'), {
        method: 'POST', mode: 'cors', credentials: 'omit', signal: abort.signal,
        body: JSON.stringify(body)
      });
      if (!response.ok) throw new Error('tailor: decide answered ' + response.status);
      var answer = await response.json();
      tailor.decision = answer;
      answer.decisions.forEach(function (d) { byPlacement[d.placement] = d; });
      nodes.forEach(function (el) {
        var d = byPlacement[el.getAttribute(PLACEMENT)];
        if (!d || !d.variant) return;
        if (el.hasAttribute(SLOTS)) {
          if (d.slate) renderSlate(el, d.slate);
        } else if (d.payload) apply(el, d.payload);
        el.setAttribute('data-tailor-variant', d.variant);
      });
      return finish(answer);
    } catch (error) {
      tailor.error = String(error);
      return finish(null);
    } finally {
      clearTimeout(timer);
    }
  }

  tailor.ready = document.readyState === 'loading'
    ? new Promise(function (resolve) { document.addEventListener('DOMContentLoaded', function () { resolve(decide()); }); })
    : decide();
})();
