# `make help`: each target with a `## ...` comment above it, and the comment, wrapped at 100 columns.
# Lines of a comment join into one text; a line that is no comment or target forgets the comment.
/^## / { doc = doc (doc == "" ? "" : " ") substr($0, 4); next }
/^[A-Za-z][A-Za-z0-9_.-]*:/ {
    if (doc != "") {
        target = substr($0, 1, index($0, ":") - 1)
        line = sprintf("  %-10s", target)
        words = split(doc, word, " ")
        for (i = 1; i <= words; i++) {
            if (length(line) + 1 + length(word[i]) > 100 && length(line) > 13) {
                print line
                line = sprintf("  %-10s", "")
            }
            line = line " " word[i]
        }
        print line
    }
    doc = ""
    next
}
{ doc = "" }
