// fernwart console: security keys (WebAuthn). Our own, small, served from 'self'.
// Register a key, log in with one, sign a session's grant with one: each asks
// navigator.credentials and posts the answer with the form's CSRF token.
"use strict";
(function () {
  function enc(buf) {
    var s = "", b = new Uint8Array(buf);
    for (var i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function dec(s) {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) s += "=";
    var bin = atob(s), b = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) b[i] = bin.charCodeAt(i);
    return b.buffer;
  }
  function fail(el, err) {
    var p = document.getElementById("wa-error");
    if (p) {
      p.textContent = (el.getAttribute("data-error") || "") + (err && err.name ? " (" + err.name + ")" : "");
      p.hidden = false;
    }
  }
  function post(url, csrf) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: "csrf=" + encodeURIComponent(csrf)
    }).then(function (r) {
      if (!r.ok) throw new Error("challenge refused: " + r.status);
      return r.json();
    });
  }
  function compact(cred) {
    var r = cred.response;
    return [enc(r.authenticatorData), enc(r.clientDataJSON), enc(r.signature), enc(cred.rawId)].join(".");
  }

  // Login: the security key as the second factor, with user name and password.
  var login = document.getElementById("wa-login");
  if (login) {
    login.addEventListener("click", function () {
      var form = login.form;
      if (!form.reportValidity()) return;
      post("/login/key-challenge", form.elements.csrf.value).then(function (o) {
        return navigator.credentials.get({ publicKey: {
          challenge: dec(o.challenge), rpId: o.rp_id, userVerification: "required", timeout: 60000
        } });
      }).then(function (cred) {
        form.elements.assertion.value = compact(cred);
        form.submit();
      }).catch(function (e) { fail(login, e); });
    });
  }

  // Register a key for the logged-in user.
  var reg = document.getElementById("wa-register");
  if (reg) {
    reg.addEventListener("submit", function (ev) {
      if (reg.elements.attestation.value) return;
      ev.preventDefault();
      post("/account/keys/challenge", reg.elements.csrf.value).then(function (o) {
        return navigator.credentials.create({ publicKey: {
          challenge: dec(o.challenge),
          rp: o.rp,
          user: { id: dec(o.user.id), name: o.user.name, displayName: o.user.name },
          pubKeyCredParams: [{ type: "public-key", alg: -7 }],
          authenticatorSelection: { residentKey: "required", requireResidentKey: true, userVerification: "required" },
          attestation: "none",
          excludeCredentials: o.exclude.map(function (id) { return { type: "public-key", id: dec(id) }; }),
          timeout: 60000
        } });
      }).then(function (cred) {
        reg.elements.attestation.value = enc(cred.response.attestationObject);
        reg.elements.client_data.value = enc(cred.response.clientDataJSON);
        reg.submit();
      }).catch(function (e) { fail(reg, e); });
    });
  }

  // Sign a session's grant: the challenge is the SHA-256 of the grant's bytes.
  var sign = document.getElementById("wa-sign");
  if (sign) {
    sign.addEventListener("submit", function (ev) {
      if (sign.elements.assertion.value) return;
      ev.preventDefault();
      var allow = sign.getAttribute("data-allow").split(",").filter(function (s) { return s; });
      navigator.credentials.get({ publicKey: {
        challenge: dec(sign.getAttribute("data-challenge")),
        rpId: sign.getAttribute("data-rp"),
        allowCredentials: allow.map(function (id) { return { type: "public-key", id: dec(id) }; }),
        userVerification: "required",
        timeout: 60000
      } }).then(function (cred) {
        sign.elements.assertion.value = compact(cred);
        sign.submit();
      }).catch(function (e) { fail(sign, e); });
    });
  }
})();
