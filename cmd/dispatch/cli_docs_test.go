package main

// The documents a fresh clone carries must agree with the binary: every
// flag listed with its variable and default, the protocol examples as the
// codec encodes them, and no link leading outside the repository.

import (
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/codec"
)

// repoRoot is the repository, seen from this package's directory (where
// go test runs).
const repoRoot = "../.."

// flagDocuments carry the flag table an operator reads.
var flagDocuments = []string{"README.md", "docs/interface.md"}

// builtinFlags are answered by the flag package without being declared.
var builtinFlags = map[string]bool{"h": true, "help": true}

func TestEveryFlagIsDocumentedWithItsVariableAndDefault(t *testing.T) {
	for _, doc := range flagDocuments {
		t.Run(doc, func(t *testing.T) {
			rows := flagRows(t, doc)
			o := newOptions()
			o.flags.VisitAll(func(f *flag.Flag) {
				if _, ok := rows[f.Name]; !ok {
					t.Errorf("%s does not document %s", doc, dashed(f.Name))
				}
			})
			for name := range rows {
				if o.flags.Lookup(name) == nil && !builtinFlags[name] {
					t.Errorf("%s documents %s, which the binary does not have", doc, dashed(name))
				}
			}
			for _, s := range o.settings {
				row, ok := rows[s.long]
				if !ok {
					continue // reported above
				}
				if row.env != "`"+s.envName+"`" {
					t.Errorf("%s: %s has variable %s, want `%s`", doc, dashed(s.long), row.env, s.envName)
				}
				if problem := defaultProblem(s.long, row.def); problem != "" {
					t.Errorf("%s: %s: %s", doc, dashed(s.long), problem)
				}
				if s.short != "" && rows[s.short] != row {
					t.Errorf("%s: %s is not documented in the row of %s", doc, dashed(s.short), dashed(s.long))
				}
			}
		})
	}
}

func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// defaultProblem compares a documented default with the setting's own.
// An empty default is written as a word (off, none, all interfaces); any
// other as a code span holding a value that parses to the default, so that
// `5m` documents 5m0s.
func defaultProblem(long, cell string) string {
	want := newOptions().setting(long)
	m := regexp.MustCompile("^`([^`]*)`$").FindStringSubmatch(cell)
	if want.def == "" {
		if m != nil {
			return "default documented as " + cell + ", but it has none: write a word such as off"
		}
		return ""
	}
	if m == nil {
		return "default documented as " + cell + ", want `" + want.def + "`"
	}
	fresh := newOptions().setting(long)
	if err := fresh.value.Set(m[1]); err != nil {
		return "documented default " + cell + " does not parse: " + err.Error()
	}
	if got := fresh.value.String(); got != want.def {
		return "default documented as " + cell + ", want `" + want.def + "`"
	}
	return ""
}

type flagRow struct{ env, def string }

var codeFlag = regexp.MustCompile("`--?([a-z][a-z0-9-]*)`")

// flagRows reads the table whose header is "flag | env | default |
// meaning" and indexes its rows by every flag name the first cell holds.
func flagRows(t *testing.T, doc string) map[string]*flagRow {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, doc))
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]*flagRow{}
	inTable := false
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "|") {
			inTable = false
			continue
		}
		cells := tableCells(line)
		switch {
		case len(cells) >= 4 && cells[0] == "flag" && cells[1] == "env" && cells[2] == "default":
			inTable = true
			continue
		case !inTable || strings.Trim(cells[0], "-: ") == "":
			continue // another table, or the separator row
		}
		row := &flagRow{env: cells[1], def: cells[2]}
		for _, m := range codeFlag.FindAllStringSubmatch(cells[0], -1) {
			if rows[m[1]] != nil {
				t.Errorf("%s documents %s twice", doc, dashed(m[1]))
			}
			rows[m[1]] = row
		}
	}
	if len(rows) == 0 {
		t.Fatalf("%s has no flag | env | default | meaning table", doc)
	}
	return rows
}

// tableCells splits a markdown table row; an escaped \| stays in its cell.
func tableCells(line string) []string {
	line = strings.TrimSpace(line)
	line = strings.TrimSuffix(strings.TrimPrefix(line, "|"), "|")
	var cells []string
	var cell strings.Builder
	for i := 0; i < len(line); i++ {
		switch {
		case line[i] == '\\' && i+1 < len(line) && line[i+1] == '|':
			cell.WriteByte('|')
			i++
		case line[i] == '|':
			cells = append(cells, strings.TrimSpace(cell.String()))
			cell.Reset()
		default:
			cell.WriteByte(line[i])
		}
	}
	return append(cells, strings.TrimSpace(cell.String()))
}

// The protocol document's hex examples are what the codec produces.
func TestProtocolDocumentExamplesMatchTheCodec(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "docs/protocol.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, c := range []struct {
		typ  codec.MsgType
		ip   string
		id   uint64
		data string
	}{
		{codec.Received, "127.0.0.1", 0, "testing"},
		{codec.Opened, "127.0.0.1", 0, ""},
		{codec.Write, "127.0.0.1", 0, "OK"},
		{codec.Received, "192.168.1.20", 161, "hi"},
	} {
		msg := codec.AppendMessage(nil, c.typ, []byte(c.ip), c.id, []byte(c.data))
		if want := spacedHex(msg, len(c.ip)); !strings.Contains(doc, "`"+want+"`") {
			t.Errorf("docs/protocol.md lacks the %v example for %s id %d %q: `%s`", c.typ, c.ip, c.id, c.data, want)
		}
	}
	frame := codec.AppendFrameHeader(nil, ws.OpBinary, 30)
	if want := hex.EncodeToString(frame[:1]) + " " + hex.EncodeToString(frame[1:]); !strings.Contains(doc, "`"+want+"`") {
		t.Errorf("docs/protocol.md lacks the frame header `%s` of a 30-byte message", want)
	}
}

// spacedHex groups a message's hex by field, as the protocol document
// writes it: type, ip, NUL, id_or_port, data_size[, data].
func spacedHex(msg []byte, ipLen int) string {
	ends := []int{1, 1 + ipLen, 2 + ipLen, 10 + ipLen, 14 + ipLen, len(msg)}
	var fields []string
	start := 0
	for _, end := range ends {
		if end > start {
			fields = append(fields, hex.EncodeToString(msg[start:end]))
		}
		start = end
	}
	return strings.Join(fields, " ")
}

var (
	mdLink  = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	heading = regexp.MustCompile(`(?m)^#{1,6} +(.+)$`)
)

// A fresh clone stands alone: every relative link in the documents leads
// to a file (and heading) inside the repository.
func TestDocumentLinksStayInsideTheRepository(t *testing.T) {
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	docs, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	docs = append(docs, filepath.Join(root, "README.md"))
	for _, doc := range docs {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, doc)
		for _, m := range mdLink.FindAllStringSubmatch(string(b), -1) {
			if problem := linkProblem(root, doc, m[1]); problem != "" {
				t.Errorf("%s: link %s: %s", rel, m[1], problem)
			}
		}
	}
}

func linkProblem(root, doc, link string) string {
	if strings.Contains(link, "://") || strings.HasPrefix(link, "mailto:") {
		return ""
	}
	path, anchor, _ := strings.Cut(link, "#")
	target := doc
	if path != "" {
		target = filepath.Join(filepath.Dir(doc), path)
		if r, err := filepath.Rel(root, target); err != nil || strings.HasPrefix(r, "..") {
			return "leads outside the repository"
		}
	}
	b, err := os.ReadFile(target)
	if err != nil {
		return "no such file in the repository"
	}
	if anchor != "" && !hasHeading(string(b), anchor) {
		return "no heading #" + anchor
	}
	return ""
}

// hasHeading reports whether a heading of the markdown text has this
// anchor, made as GitHub makes it: lower case, punctuation dropped,
// spaces turned into hyphens.
func hasHeading(text, anchor string) bool {
	for _, m := range heading.FindAllStringSubmatch(text, -1) {
		var slug strings.Builder
		for _, r := range strings.ToLower(m[1]) {
			switch {
			case r == ' ':
				slug.WriteByte('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
				slug.WriteRune(r)
			}
		}
		if slug.String() == anchor {
			return true
		}
	}
	return false
}
