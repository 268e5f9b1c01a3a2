"""Reading and writing EM files: :mod:`.readers` (one ``Volume`` interface over every format), :mod:`.writers`
(label and probability maps written slice by slice) and :mod:`.formats` (the table of suffixes both use).

The package exports nothing itself: import each name from its module.
"""
