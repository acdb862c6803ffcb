# `make help`: each target with a `## ...` comment above it, and the comment, wrapped at 100 columns.
# Lines of a comment join into one text; a line that is no comment or target forgets the comment.
/^## / { doc = doc (doc == "" ? "" : " ") substr($0, 4); next }
/^[A-Za-z][A-Za-z0-9_.-]*:/ {
    if (doc != "") {
        n++
        target[n] = substr($0, 1, index($0, ":") - 1)
        text[n] = doc
        if (length(target[n]) > width) width = length(target[n])
    }
    doc = ""
    next
}
{ doc = "" }
END {
    for (t = 1; t <= n; t++) {
        line = sprintf("  %-" width "s ", target[t])
        indent = sprintf("%" (width + 3) "s", "")
        first = 1
        words = split(text[t], word, " ")
        for (i = 1; i <= words; i++) {
            if (!first && length(line) + 1 + length(word[i]) > 100) {
                print line
                line = indent
                first = 1
            }
            line = line (first ? "" : " ") word[i]
            first = 0
        }
        print line
    }
}
