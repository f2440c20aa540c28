// MathJax settings for pymdownx.arithmatex (generic mode): typeset only the spans and blocks it marks,
// and again after each page change of the Material theme's instant navigation.
window.MathJax = {
  tex: { inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true },
  options: { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex" },
};
if (typeof document$ !== "undefined") {
  document$.subscribe(() => MathJax.typesetPromise && MathJax.typesetPromise());
}
