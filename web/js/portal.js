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
