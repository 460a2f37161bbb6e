// Package token holds relay tokens as practable's relay names them: their
// claims, their scopes, and how to sign one. It is a leaf (it imports only
// the JWT library), so that tools and test kits can mint tokens without
// importing the relay kind.
package token

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"slices"

	"github.com/golang-jwt/jwt/v5"
)

// Scopes a token may carry.
const (
	ScopeRead  = "read"
	ScopeWrite = "write"
	ScopeAdmin = "relay:admin"
	ScopeStats = "relay:stats"
)

// PrefixSession is the one connection type served; practable's "shell" is not.
const PrefixSession = "session"

// Claims are a relay token's claims.
type Claims struct {
	Topic     string   `json:"topic,omitempty"`
	Prefix    string   `json:"prefix,omitempty"`
	Scopes    []string `json:"scopes,omitempty"`
	BookingID string   `json:"booking_id,omitempty"`
	jwt.RegisteredClaims
}

// Has reports whether the token carries a scope.
func (c *Claims) Has(scope string) bool { return slices.Contains(c.Scopes, scope) }

// Mint signs claims: with an HMAC secret ([]byte) as HS256, with a private
// key as the algorithm that fits it (RS256, ES256/384/512, EdDSA).
func Mint(claims *Claims, key any) (string, error) {
	var method jwt.SigningMethod
	switch k := key.(type) {
	case []byte:
		if len(k) == 0 {
			return "", errors.New("empty secret")
		}
		method = jwt.SigningMethodHS256
	case *rsa.PrivateKey:
		method = jwt.SigningMethodRS256
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256():
			method = jwt.SigningMethodES256
		case elliptic.P384():
			method = jwt.SigningMethodES384
		case elliptic.P521():
			method = jwt.SigningMethodES512
		default:
			return "", fmt.Errorf("unsupported curve %s", k.Curve.Params().Name)
		}
	case ed25519.PrivateKey:
		method = jwt.SigningMethodEdDSA
	default:
		return "", fmt.Errorf("unsupported key type %T", key)
	}
	return jwt.NewWithClaims(method, claims).SignedString(key)
}
