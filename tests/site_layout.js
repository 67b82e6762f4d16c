// What a reader sees of each block of a page (tests/test_site.py runs it in the browser).
// Returns a list of problems: blocks clipped or off the page, TeX shown as text; on the desktop (argument
// true) also equations, code and tables wider than the page, and figures that are blurred or shrunk.
(desktop) => {
  const problems = [];
  const article = document.querySelector('article.bd-article') || document.querySelector('main');
  const viewport = document.documentElement.clientWidth;
  const shown = e => { const r = e.getBoundingClientRect(); const s = getComputedStyle(e);
                       return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && e.closest('details:not([open])') === null; };
  const ox = e => getComputedStyle(e).overflowX;
  const tex = m => { try { return MathJax.startup.document.getMathItemsWithin(m)[0].math.trim(); } catch (e) { return m.textContent; } };
  const snippet = s => JSON.stringify(s.replace(/\s+/g, ' ').slice(0, 70));
  // Is any part of el out of the reader's reach? A box that scrolls is fine; one that hides, or the page edge, is not.
  function clipped(el) {
    if (el.scrollWidth > el.clientWidth + 1 && ['hidden', 'clip'].includes(ox(el)))
      return `its box hides ${el.scrollWidth - el.clientWidth} px of it`;
    let box = el.getBoundingClientRect();
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      const o = ox(a);
      if (o === 'visible') continue;
      const r = a.getBoundingClientRect();
      const left = r.left + a.clientLeft, right = left + a.clientWidth;
      if (box.right > right + 1 || box.left < left - 1) {
        if (o === 'hidden' || o === 'clip')
          return `${a.tagName.toLowerCase()}.${[...a.classList].join('.')} hides ${Math.round(box.right - right)} px of it`;
        box = r;  // it scrolls inside a: the reader reaches it by scrolling a
      }
    }
    if (box.right > viewport + 1 || box.left < -1) return `it runs ${Math.round(box.right - viewport)} px off the page`;
    return null;
  }
  const blocks = [
    ['display equation', 'mjx-container[display="true"]', m => tex(m)],
    ['figure', 'img', i => i.alt || i.src.split('/').pop()],
    ['code block', 'div.highlight pre', p => p.textContent],
    ['table', 'table', t => t.textContent],
  ];
  for (const [kind, selector, describe] of blocks) {
    article.querySelectorAll(selector).forEach(el => {
      if (!shown(el)) return;
      const why = clipped(el);
      if (why) problems.push(`${kind} clipped (${why}): ${snippet(describe(el))}`);
    });
  }
  if (document.documentElement.scrollWidth > viewport + 1)
    problems.push(`the page scrolls sideways: ${document.documentElement.scrollWidth} px wide in a ${viewport} px window`);
  // TeX shown as text: a backslash in an equation's text (\text{running\_var}), or a word set as italic
  // letters (r_{max} rather than r_{\max}).
  article.querySelectorAll('mjx-container').forEach(m => {
    const mml = m.querySelector('mjx-assistive-mml');
    if (!mml) return;
    mml.querySelectorAll('mtext').forEach(t => {
      if (t.textContent.includes('\\')) problems.push(`equation shows TeX as text ${snippet(t.textContent)}: ${snippet(tex(m))}`);
    });
    mml.querySelectorAll('mrow, math, msub, msup, msubsup').forEach(row => {
      let word = '';
      for (const c of row.children) {
        if (c.tagName.toLowerCase() === 'mi' && /^[a-z]$/.test(c.textContent) && c.getAttribute('mathvariant') !== 'normal') word += c.textContent;
        else word += ' ';
      }
      const hit = word.match(/\b(max|min|var|mean|std|exp|log|argmax|argmin)\b/);
      if (hit) problems.push(`"${hit[1]}" set as italic letters (write \\${hit[1]} or \\mathrm{${hit[1]}}): ${snippet(tex(m))}`);
    });
  });
  if (!desktop) return [...new Set(problems)];
  // On the desktop nothing needs sideways scrolling, and figures are sharp and at their own size.
  article.querySelectorAll('mjx-container[display="true"]').forEach(m => {
    if (shown(m) && m.scrollWidth > m.clientWidth + 1)
      problems.push(`display equation wider than the page (${m.scrollWidth} px in ${m.clientWidth} px; one step per line): ${snippet(tex(m))}`);
  });
  article.querySelectorAll('div.highlight pre').forEach(p => {
    if (!shown(p) || p.scrollWidth <= p.clientWidth + 1) return;
    const longest = p.textContent.split('\n').reduce((a, b) => (b.length > a.length ? b : a), '');
    problems.push(`code or output wider than the page (${p.scrollWidth} px in ${p.clientWidth} px; its longest line has ${longest.length} characters): ${snippet(longest)}`);
  });
  article.querySelectorAll('table').forEach(t => {
    const box = t.parentElement;
    if (shown(t) && t.getBoundingClientRect().width > box.clientWidth + 1)
      problems.push(`table wider than the page (${Math.round(t.getBoundingClientRect().width)} px in ${box.clientWidth} px): ${snippet(t.textContent)}`);
  });
  article.querySelectorAll('img').forEach(i => {
    if (!shown(i)) return;
    const w = i.getBoundingClientRect().width;
    const intended = parseFloat(i.style.width) || i.naturalWidth;
    if (i.naturalWidth < 1.9 * w)
      problems.push(`figure not sharp (${i.naturalWidth} px image shown ${Math.round(w)} px wide; store it at twice the pixels): ${snippet(i.alt)}`);
    if (w < 0.9 * intended)
      problems.push(`figure shrunk to ${Math.round(100 * w / intended)}% to fit the page, and its text with it (${Math.round(intended)} px wide in ${Math.round(w)} px; make it at most ${Math.floor(w / 10) / 10} in wide): ${snippet(i.alt)}`);
  });
  return [...new Set(problems)];
}
