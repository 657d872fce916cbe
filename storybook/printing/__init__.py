"""printing: the book as a print-ready PDF, with its fonts (and fallbacks for glyphs they lack) and its pictures
upscaled for print."""
