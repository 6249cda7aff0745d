package ctl

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"sigs.k8s.io/yaml"
)

// report is what a command found, printable as text, JSON or YAML. The
// JSON (and YAML, the same document) is documented in docs/pelagicctl.md
// and kept stable by the golden tests.
type report interface {
	writeText(w io.Writer, now time.Time)
}

// textWidth is the widest line text output prints.
const textWidth = 120

func emit(w io.Writer, format string, r report, now time.Time) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	case "yaml":
		b, err := yaml.Marshal(r)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	var buf bytes.Buffer
	r.writeText(&buf, now)
	_, err := io.WriteString(w, wrapLines(buf.String(), textWidth))
	return err
}

// wrapLines breaks lines wider than width at spaces, indenting the rest
// under the start of the line's value ("key:  value", or the text after
// the leading blanks).
func wrapLines(text string, width int) string {
	var out strings.Builder
	for _, line := range strings.SplitAfter(text, "\n") {
		nl := strings.HasSuffix(line, "\n")
		line = strings.TrimSuffix(line, "\n")
		indent := hangingIndent(line)
		for utf8.RuneCountInString(line) > width {
			cut := breakAt(line, width, indent)
			if cut <= 0 {
				break
			}
			out.WriteString(strings.TrimRight(line[:cut], " ") + "\n")
			line = strings.Repeat(" ", indent) + strings.TrimLeft(line[cut:], " ")
		}
		out.WriteString(line)
		if nl {
			out.WriteString("\n")
		}
	}
	return out.String()
}

// breakAt finds the last space at or before width (in runes) past the
// indent; 0 when there is none.
func breakAt(line string, width, indent int) int {
	last, runes := 0, 0
	for i, r := range line {
		if runes > width {
			break
		}
		if r == ' ' && runes > indent {
			last = i
		}
		runes++
	}
	return last
}

// hangingIndent is where continuation lines start: after "key:" and its
// padding, or after the leading blanks; at most 40 columns.
func hangingIndent(line string) int {
	lead := len(line) - len(strings.TrimLeft(line, " "))
	if i := strings.Index(line, ":  "); i > 0 && !strings.Contains(line[:i], " ") {
		j := i + 1
		for j < len(line) && line[j] == ' ' {
			j++
		}
		if j <= 40 {
			return j
		}
	}
	return min(lead+2, 40)
}
