// Tollgate developer portal: small progressive enhancements. Every form
// works without this script; it only adds confirmations and copy buttons.
'use strict';
document.addEventListener('submit', function (e) {
  var form = e.target;
  var question = form.getAttribute && form.getAttribute('data-confirm');
  if (question && !window.confirm(question)) e.preventDefault();
});
document.addEventListener('click', function (e) {
  var button = e.target.closest && e.target.closest('button[data-copy]');
  if (!button) return;
  var field = document.getElementById(button.getAttribute('data-copy'));
  var status = button.parentNode.querySelector('.copy-status');
  if (!field) return;
  function done(ok) {
    if (status) status.textContent = ok ? 'Copied.' : 'Select the key and copy it.';
  }
  field.select();
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(field.value).then(function () { done(true); },
                                                    function () { done(false); });
  } else {
    var ok = false;
    try { ok = document.execCommand('copy'); } catch (err) { ok = false; }
    done(ok);
  }
});
// The API reference: RapiDoc renders the document in a <main> of its own,
// inside its shadow root and so inside the page's <main>: a second main
// landmark for screen readers (axe: landmark-no-duplicate-main). Make every
// <main> it renders a named region instead.
(function () {
  var doc = document.querySelector('rapi-doc');
  if (!doc || !window.customElements || !window.MutationObserver) return;
  customElements.whenDefined('rapi-doc').then(function () {
    var root = doc.shadowRoot;
    if (!root) return;
    function demote() {
      var mains = root.querySelectorAll('main:not([role])');
      for (var i = 0; i < mains.length; i++) {
        mains[i].setAttribute('role', 'region');
        mains[i].setAttribute('aria-label', 'API reference');
      }
    }
    new MutationObserver(demote).observe(root, {childList: true, subtree: true});
    demote();
  });
})();
