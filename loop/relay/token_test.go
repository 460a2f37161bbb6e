package relay

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const aud = "https://relay-access.example"

func claimsFor(now time.Time) *Claims {
	return &Claims{Topic: "t", Prefix: PrefixSession, Scopes: []string{ScopeRead}, BookingID: "b",
		RegisteredClaims: jwt.RegisteredClaims{Audience: jwt.ClaimStrings{aud}, IssuedAt: jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}}
}

// Each way a token can be wrong has its own reason.
func TestVerifyReasons(t *testing.T) {
	now := time.Now()
	secret := []byte("s3cret")
	v, err := NewVerifier(secret, nil, aud)
	if err != nil {
		t.Fatal(err)
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	mint := func(edit func(*Claims), key any) string {
		c := claimsFor(now)
		if edit != nil {
			edit(c)
		}
		s, err := Mint(c, key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	noExp := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"aud": aud, "topic": "t"})
	noExpToken, _ := noExp.SignedString(secret)
	for _, c := range []struct {
		name  string
		token string
		want  Reason
	}{
		{"good", mint(nil, secret), ""},
		{"missing", "", ReasonMissingToken},
		{"garbage", "x", ReasonMalformed},
		{"three dots of garbage", "a.b.c", ReasonMalformed},
		{"other secret", mint(nil, []byte("other")), ReasonSignature},
		{"ES256 without a key", mint(nil, ec), ReasonAlgorithm},
		{"expired", mint(func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(now.Add(-time.Second)) }, secret), ReasonExpired},
		{"not yet", mint(func(c *Claims) { c.NotBefore = jwt.NewNumericDate(now.Add(time.Minute)) }, secret), ReasonNotYetValid},
		{"issued later", mint(func(c *Claims) { c.IssuedAt = jwt.NewNumericDate(now.Add(time.Minute)) }, secret), ReasonIssuedLater},
		{"audience", mint(func(c *Claims) { c.Audience = jwt.ClaimStrings{"https://other"} }, secret), ReasonAudience},
		{"no audience", mint(func(c *Claims) { c.Audience = nil }, secret), ReasonMissingClaims},
		{"no expiry", noExpToken, ReasonMissingClaims},
	} {
		claims, aerr := v.Verify(c.token, now)
		switch {
		case c.want == "" && aerr != nil:
			t.Errorf("%s: refused: %v", c.name, aerr)
		case c.want == "" && claims.Topic != "t":
			t.Errorf("%s: claims %+v", c.name, claims)
		case c.want != "" && (aerr == nil || aerr.Reason != c.want):
			t.Errorf("%s: got %v, want reason %s", c.name, aerr, c.want)
		}
	}
}

// The verifier accepts the asymmetric algorithm its key fits, and no HMAC
// token unless it holds a secret: a public key used as an HMAC secret
// (the classic confusion) is refused.
func TestVerifyPublicKey(t *testing.T) {
	now := time.Now()
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	v, err := NewVerifier(nil, &ec.PublicKey, aud)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(v.Algorithms(), ","); got != "ES256" {
		t.Fatalf("algorithms %s", got)
	}
	good, _ := Mint(claimsFor(now), ec)
	if _, aerr := v.Verify(good, now); aerr != nil {
		t.Fatalf("ES256: %v", aerr)
	}
	hs, _ := Mint(claimsFor(now), []byte("anything"))
	if _, aerr := v.Verify(hs, now); aerr == nil || aerr.Reason != ReasonAlgorithm {
		t.Fatalf("HS256 against a public key: %v", aerr)
	}
	if _, err := NewVerifier(nil, nil, aud); err == nil {
		t.Fatal("a verifier with no key")
	}
}

// Whatever the token, Verify answers without panicking, and accepts only
// what the secret signed.
func FuzzVerify(f *testing.F) {
	now := time.Unix(1_700_000_000, 0)
	secret := []byte("s3cret")
	good, _ := Mint(claimsFor(now), secret)
	for _, s := range []string{good, "", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", good[:len(good)-2], strings.Replace(good, ".", "..", 1)} {
		f.Add(s)
	}
	v, _ := NewVerifier(secret, nil, aud)
	f.Fuzz(func(t *testing.T, token string) {
		claims, aerr := v.Verify(token, now)
		if aerr == nil && token != good {
			// Another encoding of the same signed token is possible only
			// through jwt's lenient base64; it must still carry our claims.
			if claims.Topic != "t" {
				t.Fatalf("accepted %q with claims %+v", token, claims)
			}
		}
		if aerr != nil && aerr.Message == "" {
			t.Fatalf("refusal without a message for %q", token)
		}
	})
}
