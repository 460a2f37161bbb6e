package loop

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The core never names a kind: no file of package loop may import a
// package below loop/ (the kinds and the roles they share live there).
func TestCoreImportsNoKind(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	const module = "github.com/placeos-gnet/dispatch/loop/"
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue // external tests may use the kinds
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(path, module) {
				t.Errorf("%s imports %s: the core must not import a kind", name, path)
			}
		}
	}
}
