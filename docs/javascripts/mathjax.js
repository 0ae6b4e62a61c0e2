// MathJax 3 configuration, loaded before MathJax itself (extra_javascript in mkdocs.yml).
// Markdown and API pages: pymdownx.arithmatex (generic) wraps each formula in an element of
// class "arithmatex" as \(...\) or \[...\]; only those elements are typeset.
// Notebook pages (mkdocs-jupyter, class "jupyter-wrapper"): markdown cells keep $...$ and
// $$...$$; the page is typeset with those delimiters (code and outputs are <pre>, skipped).
const notebookPage = document.querySelector(".jupyter-wrapper") !== null;

window.MathJax = {
  tex: notebookPage
    ? {
        inlineMath: [["$", "$"], ["\\(", "\\)"]],
        displayMath: [["$$", "$$"], ["\\[", "\\]"]],
        processEscapes: true,
        processEnvironments: true,
      }
    : {
        inlineMath: [["\\(", "\\)"]],
        displayMath: [["\\[", "\\]"]],
        processEscapes: true,
        processEnvironments: true,
      },
  options: notebookPage
    ? { ignoreHtmlClass: "md-header|md-nav|md-footer|md-search" }
    : { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex" },
};
