// Sortable and filterable tables of the ssl-bench leaderboard; plain JavaScript, no network, works from file://.
//
// <table class="sortable">: a click on a header button sorts the body rows by that column, ascending first,
// then descending; a cell's data-sort attribute (a number) is its sort key, else its text. Empty keys sort last.
// <input data-filter="TABLE-ID">: shows the rows whose text holds every word typed (case-insensitive);
// an element with data-count-for="TABLE-ID" says how many rows are shown.
"use strict";

(function () {
  function sortKey(cell) {
    return cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
  }

  function compareKeys(a, b) {
    if (a === "" || b === "") {
      return (a === "") - (b === "");
    }
    const x = Number(a);
    const y = Number(b);
    if (!Number.isNaN(x) && !Number.isNaN(y)) {
      return x - y;
    }
    return a.localeCompare(b, undefined, { numeric: true, sensitivity: "base" });
  }

  function sortTable(table, header) {
    const column = Array.from(header.parentNode.children).indexOf(header);
    const order = header.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    const sign = order === "ascending" ? 1 : -1;
    for (const other of header.parentNode.children) {
      other.removeAttribute("aria-sort");
    }
    header.setAttribute("aria-sort", order);
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    rows.sort(function (r, s) {
      const a = sortKey(r.cells[column]);
      const b = sortKey(s.cells[column]);
      return a === "" || b === "" ? compareKeys(a, b) : sign * compareKeys(a, b);
    });
    body.append(...rows);
  }

  function filterTable(table, text, counter) {
    const words = text.toLowerCase().split(/\s+/).filter(Boolean);
    const rows = Array.from(table.tBodies[0].rows);
    let shown = 0;
    for (const row of rows) {
      const content = row.textContent.toLowerCase();
      row.hidden = !words.every(function (word) { return content.includes(word); });
      shown += row.hidden ? 0 : 1;
    }
    if (counter) {
      counter.textContent = shown + " of " + rows.length + " rows";
    }
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    for (const header of table.tHead.rows[0].cells) {
      const button = document.createElement("button");
      button.type = "button";
      button.append(...header.childNodes);
      button.addEventListener("click", function () { sortTable(table, header); });
      header.append(button);
    }
  });

  document.querySelectorAll("input[data-filter]").forEach(function (input) {
    const table = document.getElementById(input.dataset.filter);
    const counter = document.querySelector('[data-count-for="' + input.dataset.filter + '"]');
    const update = function () { filterTable(table, input.value, counter); };
    input.addEventListener("input", update);
    update();
  });
})();
