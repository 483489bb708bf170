// Usage chart of an app: reads the JSON the page points at (data-src) and
// draws it with uPlot. The table under the chart holds the same numbers
// for screen readers and for browsers without JavaScript.
'use strict';
(function () {
  var box = document.getElementById('usage-chart');
  if (!box || typeof uPlot === 'undefined') return;
  fetch(box.getAttribute('data-src'), {credentials: 'same-origin'})
    .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
    .then(function (d) {
      var width = Math.max(320, Math.min(box.clientWidth || 800, 1000));
      var opts = {
        width: width,
        height: 280,
        tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC'); },
        scales: {x: {time: true}},
        series: [
          {label: d.bucket === 3600 ? 'Hour (UTC)' : 'Day (UTC)'},
          {label: 'Calls', stroke: '#0b5cad', width: 2, fill: 'rgba(11,92,173,0.08)'},
          {label: 'Errors', stroke: '#b42318', width: 2},
          {label: 'Refused', stroke: '#6b4e00', width: 2, dash: [6, 4]},
        ],
        axes: [{}, {label: 'calls'}],
      };
      box.setAttribute('role', 'img');
      box.setAttribute('aria-label', 'Chart of calls, errors and refused calls; the table below lists the same numbers.');
      box.setAttribute('data-points', String(d.t.length));
      new uPlot(opts, [d.t, d.calls, d.errors, d.rejected], box);
      box.setAttribute('data-ready', 'true');
    })
    .catch(function () {
      box.textContent = 'The chart could not be loaded; the table below has the numbers.';
    });
})();
