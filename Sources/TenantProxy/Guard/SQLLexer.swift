// SQLLexer: a byte-level lexer for PostgreSQL SQL text, written to agree with the server's own
// scanner (src/backend/parser/scan.l, PostgreSQL 13 and later) on the one thing the guard depends
// on: where quoted text, comments and statements begin and end.
//
// It works on UTF-8 bytes without copying them; tokens are plain offsets. Values (folded
// identifiers, decoded string constants) are produced only on request.
//
// Rules mirrored from scan.l, in the places where a careless lexer would disagree with the server:
// - whitespace is [ \t\n\r\f\v]; `--` comments run to \n or \r; `/* */` comments nest.
// - an operator that contains `/*` or `--` ends just before it (`=--x` is `=` and a comment), and
//   a trailing `+`/`-` is split off unless the operator holds one of ~!@#^&|`?% (`=-1` is `=` `-1`).
// - identifiers: [A-Za-z\x80-\xff_][A-Za-z\x80-\xff_0-9$]*, so `x$$` is ONE identifier and does
//   not open a dollar quote. Unquoted identifiers fold ASCII letters to lower case. Identifiers are
//   truncated to 63 bytes (NAMEDATALEN - 1) at a character boundary, as the server does.
// - `"..."` identifiers with `""`; `U&"..."` identifiers with \XXXX, \+XXXXXX and `UESCAPE 'c'`
//   (comments and whitespace may come between the parts).
// - '...' strings with ''; with standard_conforming_strings off, '...' behaves like E'...'.
//   E'...' strings with backslash escapes (a backslash hides the next byte, including a quote).
//   U&'...' strings; B'...' and X'...' bit strings, in which '' is NOT an escape (a quote ends them).
//   N'...' is a plain string.
// - string continuation: 'a' <whitespace containing a newline, and `--` comments> 'b' is ONE
//   constant "ab", and the continuation is lexed in the same mode as the first part
//   (E'a'\n'\'' continues an E string).
// - `$tag$...$tag$` (tag: [A-Za-z\x80-\xff_][A-Za-z\x80-\xff_0-9]*) and `$$...$$`;
//   `$1` is a parameter (so `$1$$x$$` is a parameter followed by a dollar quote).
// - numbers: 123, 1_000, 0x1F, 0o17, 0b101, 1.5, .5, 1e10; a prefix or exponent without digits
//   is not consumed (`0x$$`: the number `0` then the identifier `x$$`, as older servers lex it;
//   newer ones reject it: where versions differ, one of them raises an error, and we follow the
//   one that does not).
// - anything else is a one-byte `.other` token (the server raises a syntax error for most).
//   A NUL byte is an ordinary byte here: the server stops at the first NUL, so it sees at most
//   what we see.
//
// An unterminated quote, dollar quote or comment yields one `.unterminated` token covering the rest
// of the input, then the lexer ends.

/// How a string constant was written (and so how its body is decoded).
enum SQLStringStyle: Equatable, Sendable {
    /// '...' (or N'...') with standard_conforming_strings on: backslash is an ordinary character.
    case standard
    /// E'...', or '...' with standard_conforming_strings off.
    case escape
    /// U&'...' with optional UESCAPE.
    case unicode
    /// B'...'
    case bit
    /// X'...'
    case hex
}

enum SQLUnterminatedKind: Equatable, Sendable {
    case blockComment, string, quotedIdentifier, dollarString
}

struct SQLToken: Equatable, Sendable {
    enum Kind: Equatable, Sendable {
        /// Unquoted identifier or keyword.
        case identifier
        /// "..." identifier.
        case quotedIdentifier
        /// U&"..." identifier (the span includes a following UESCAPE clause).
        case unicodeIdentifier
        /// A string constant (the span includes continuations and a UESCAPE clause).
        case string(SQLStringStyle)
        /// $tag$...$tag$
        case dollarString
        case number
        /// $1, $2, ...
        case parameter
        /// An operator such as `=`, `<>`, `::`, `||`, `+`.
        case `operator`
        /// One of `,` `(` `)` `[` `]` `;` `.` `:` (the byte is the payload).
        case punctuation(UInt8)
        /// A byte the grammar has no use for (`\`, `{`, a lone `$`, ...).
        case other
        /// An unclosed quote, dollar quote or comment: the rest of the input.
        case unterminated(SQLUnterminatedKind)
    }

    var kind: Kind
    /// Byte offsets of the whole token, `start..<end`.
    var start: Int
    var end: Int
    /// For quoted forms: the body between the opening delimiter and the final closing delimiter.
    var bodyStart: Int
    var bodyEnd: Int
    /// For U& forms: the escape character (`\` unless UESCAPE gave another); 0 when the UESCAPE
    /// clause is invalid (the server rejects the statement; decoding returns nil).
    var escape: UInt8 = UInt8(ascii: "\\")

    var isSemicolon: Bool {
        if case .punctuation(UInt8(ascii: ";")) = kind { return true }
        return false
    }

    var isIdentifierLike: Bool {
        switch kind {
        case .identifier, .quotedIdentifier, .unicodeIdentifier: return true
        default: return false
        }
    }
}

struct SQLLexer {
    let bytes: UnsafeBufferPointer<UInt8>
    let count: Int
    let standardConformingStrings: Bool
    /// Byte offset of the next unread byte.
    var position: Int = 0
    /// Set when a plain '...' string (lexed with standard_conforming_strings on) held a backslash:
    /// the only case in which the setting changes how the text splits into tokens.
    private(set) var sawBackslashInStandardString = false

    init(_ bytes: UnsafeBufferPointer<UInt8>, standardConformingStrings: Bool = true) {
        self.bytes = bytes
        self.count = bytes.count
        self.standardConformingStrings = standardConformingStrings
    }

    // MARK: byte classes

    @inline(__always) private func at(_ i: Int) -> UInt8 { i < count ? bytes[i] : 0 }

    @inline(__always) static func isSpace(_ c: UInt8) -> Bool {
        c == 0x20 || (c >= 0x09 && c <= 0x0D)  // space \t \n \v \f \r
    }
    @inline(__always) static func isNewline(_ c: UInt8) -> Bool { c == 0x0A || c == 0x0D }
    @inline(__always) static func isHorizontalSpace(_ c: UInt8) -> Bool {
        c == 0x20 || c == 0x09 || c == 0x0B || c == 0x0C
    }
    @inline(__always) static func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }
    @inline(__always) static func isHexDigit(_ c: UInt8) -> Bool {
        isDigit(c) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66)
    }
    @inline(__always) static func isIdentStart(_ c: UInt8) -> Bool {
        (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || c == 0x5F || c >= 0x80
    }
    @inline(__always) static func isIdentCont(_ c: UInt8) -> Bool {
        isIdentStart(c) || isDigit(c) || c == 0x24
    }
    @inline(__always) static func isDollarTagCont(_ c: UInt8) -> Bool { isIdentStart(c) || isDigit(c) }
    @inline(__always) static func isOpChar(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "~"), UInt8(ascii: "!"), UInt8(ascii: "@"), UInt8(ascii: "#"),
             UInt8(ascii: "^"), UInt8(ascii: "&"), UInt8(ascii: "|"), UInt8(ascii: "`"),
             UInt8(ascii: "?"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "*"),
             UInt8(ascii: "/"), UInt8(ascii: "%"), UInt8(ascii: "<"), UInt8(ascii: ">"),
             UInt8(ascii: "="):
            return true
        default:
            return false
        }
    }
    @inline(__always) static func asciiLower(_ c: UInt8) -> UInt8 { (c >= 0x41 && c <= 0x5A) ? c | 0x20 : c }

    // MARK: tokens

    /// The next token, or nil at the end of the input.
    mutating func next() -> SQLToken? { lex(allowUescape: true) }

    private mutating func lex(allowUescape: Bool) -> SQLToken? {
        if let bad = skipTrivia() { return bad }
        guard position < count else { return nil }
        let s = position
        let c = bytes[s]
        switch c {
        case _ where SQLLexer.isIdentStart(c):
            return lexWord(s, allowUescape: allowUescape)
        case _ where SQLLexer.isDigit(c):
            return lexNumber(s)
        case UInt8(ascii: "."):
            if SQLLexer.isDigit(at(s + 1)) { return lexNumber(s) }
            if at(s + 1) == UInt8(ascii: ".") { return simple(.operator, s, 2) }
            return simple(.punctuation(c), s, 1)
        case UInt8(ascii: "'"):
            return lexString(standardConformingStrings ? .standard : .escape, tokenStart: s, bodyStart: s + 1)
        case UInt8(ascii: "\""):
            return lexQuotedIdentifier(.quotedIdentifier, tokenStart: s, bodyStart: s + 1)
        case UInt8(ascii: "$"):
            return lexDollar(s)
        case UInt8(ascii: ","), UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "["),
             UInt8(ascii: "]"), UInt8(ascii: ";"):
            return simple(.punctuation(c), s, 1)
        case UInt8(ascii: ":"):
            let n = at(s + 1)
            if n == UInt8(ascii: ":") || n == UInt8(ascii: "=") { return simple(.operator, s, 2) }
            return simple(.punctuation(c), s, 1)
        case _ where SQLLexer.isOpChar(c):
            return lexOperator(s)
        default:
            return simple(.other, s, 1)
        }
    }

    @inline(__always) private mutating func simple(_ kind: SQLToken.Kind, _ s: Int, _ length: Int) -> SQLToken {
        position = s + length
        return SQLToken(kind: kind, start: s, end: s + length, bodyStart: s, bodyEnd: s + length)
    }

    private mutating func unterminated(_ kind: SQLUnterminatedKind, _ s: Int) -> SQLToken {
        position = count
        return SQLToken(kind: .unterminated(kind), start: s, end: count, bodyStart: s, bodyEnd: count)
    }

    /// Skips whitespace and comments. Returns an `.unterminated` token for an unclosed `/*`.
    private mutating func skipTrivia() -> SQLToken? {
        var i = position
        while i < count {
            let c = bytes[i]
            if SQLLexer.isSpace(c) {
                i += 1
            } else if c == UInt8(ascii: "-") && at(i + 1) == UInt8(ascii: "-") {
                i += 2
                while i < count && !SQLLexer.isNewline(bytes[i]) { i += 1 }
            } else if c == UInt8(ascii: "/") && at(i + 1) == UInt8(ascii: "*") {
                let start = i
                var depth = 1
                i += 2
                while depth > 0 {
                    guard i < count else {
                        position = start
                        return unterminated(.blockComment, start)
                    }
                    let d = bytes[i]
                    if d == UInt8(ascii: "/") && at(i + 1) == UInt8(ascii: "*") {
                        depth += 1; i += 2
                    } else if d == UInt8(ascii: "*") && at(i + 1) == UInt8(ascii: "/") {
                        depth -= 1; i += 2
                    } else {
                        i += 1
                    }
                }
            } else {
                break
            }
        }
        position = i
        return nil
    }

    private mutating func lexWord(_ s: Int, allowUescape: Bool) -> SQLToken {
        let c = bytes[s]
        let c1 = at(s + 1)
        if c1 == UInt8(ascii: "'") {
            switch c | 0x20 {
            case UInt8(ascii: "b"): return lexString(.bit, tokenStart: s, bodyStart: s + 2)
            case UInt8(ascii: "x"): return lexString(.hex, tokenStart: s, bodyStart: s + 2)
            case UInt8(ascii: "e"): return lexString(.escape, tokenStart: s, bodyStart: s + 2)
            case UInt8(ascii: "n"):
                return lexString(standardConformingStrings ? .standard : .escape, tokenStart: s, bodyStart: s + 2)
            default: break
            }
        }
        if c | 0x20 == UInt8(ascii: "u") && c1 == UInt8(ascii: "&") {
            let c2 = at(s + 2)
            if c2 == UInt8(ascii: "'") || c2 == UInt8(ascii: "\"") {
                var token = c2 == UInt8(ascii: "'")
                    ? lexString(.unicode, tokenStart: s, bodyStart: s + 3)
                    : lexQuotedIdentifier(.unicodeIdentifier, tokenStart: s, bodyStart: s + 3)
                if case .unterminated = token.kind { return token }
                if allowUescape { applyUescape(&token) }
                return token
            }
        }
        var e = s + 1
        while e < count && SQLLexer.isIdentCont(bytes[e]) { e += 1 }
        position = e
        return SQLToken(kind: .identifier, start: s, end: e, bodyStart: s, bodyEnd: e)
    }

    /// Looks past a U& token for `UESCAPE 'c'` (comments may intervene), as the server's
    /// parser.c does, and consumes it.
    private mutating func applyUescape(_ token: inout SQLToken) {
        var probe = self
        guard let kw = probe.lex(allowUescape: false), isKeyword(kw, "uescape") else { return }
        guard let lit = probe.lex(allowUescape: false), case .string(let style) = lit.kind,
              style == .standard || style == .escape
        else {
            token.escape = 0  // the server raises "UESCAPE must be followed by a simple string literal"
            return
        }
        position = probe.position
        sawBackslashInStandardString = sawBackslashInStandardString || probe.sawBackslashInStandardString
        token.end = lit.end
        token.escape = 0
        if let value = decodedStringBytes(lit), value.count == 1 {
            let e = value[0]
            if !(SQLLexer.isHexDigit(e) || e == UInt8(ascii: "+") || e == UInt8(ascii: "'")
                 || e == UInt8(ascii: "\"") || SQLLexer.isSpace(e) || e >= 0x80) {
                token.escape = e
            }
        }
    }

    private mutating func lexString(_ style: SQLStringStyle, tokenStart s: Int, bodyStart: Int) -> SQLToken {
        var i = bodyStart
        let doubledQuoteEscapes = style != .bit && style != .hex
        while true {
            guard i < count else { return unterminated(.string, s) }
            let ch = bytes[i]
            if ch == UInt8(ascii: "\\") {
                if style == .escape {
                    guard i + 1 < count else { return unterminated(.string, s) }
                    i += 2
                    continue
                }
                if style == .standard { sawBackslashInStandardString = true }
                i += 1
                continue
            }
            if ch == UInt8(ascii: "'") {
                if doubledQuoteEscapes && at(i + 1) == UInt8(ascii: "'") { i += 2; continue }
                if let q = continuationQuote(after: i + 1) { i = q + 1; continue }
                position = i + 1
                return SQLToken(kind: .string(style), start: s, end: i + 1, bodyStart: bodyStart, bodyEnd: i)
            }
            i += 1
        }
    }

    /// scan.l's `quotecontinue`: after a closing quote, whitespace that includes a newline (and
    /// `--` comments) followed by a quote continues the same constant. Returns that quote's offset.
    private func continuationQuote(after p: Int) -> Int? {
        var i = p
        // {horiz_whitespace}*
        while i < count {
            let c = bytes[i]
            if SQLLexer.isHorizontalSpace(c) {
                i += 1
            } else if c == UInt8(ascii: "-") && at(i + 1) == UInt8(ascii: "-") {
                i += 2
                while i < count && !SQLLexer.isNewline(bytes[i]) { i += 1 }
            } else {
                break
            }
        }
        // {newline}
        guard i < count, SQLLexer.isNewline(bytes[i]) else { return nil }
        i += 1
        // {special_whitespace}*: {space}+ | {comment}{newline}
        while i < count {
            let c = bytes[i]
            if SQLLexer.isSpace(c) {
                i += 1
            } else if c == UInt8(ascii: "-") && at(i + 1) == UInt8(ascii: "-") {
                i += 2
                while i < count && !SQLLexer.isNewline(bytes[i]) { i += 1 }
                guard i < count else { return nil }
                i += 1
            } else {
                break
            }
        }
        return at(i) == UInt8(ascii: "'") && i < count ? i : nil
    }

    private mutating func lexQuotedIdentifier(_ kind: SQLToken.Kind, tokenStart s: Int, bodyStart: Int) -> SQLToken {
        var i = bodyStart
        while true {
            guard i < count else { return unterminated(.quotedIdentifier, s) }
            if bytes[i] == UInt8(ascii: "\"") {
                if at(i + 1) == UInt8(ascii: "\"") { i += 2; continue }
                position = i + 1
                return SQLToken(kind: kind, start: s, end: i + 1, bodyStart: bodyStart, bodyEnd: i)
            }
            i += 1
        }
    }

    private mutating func lexDollar(_ s: Int) -> SQLToken {
        let c1 = at(s + 1)
        if SQLLexer.isDigit(c1) {
            var e = s + 1
            while e < count && SQLLexer.isDigit(bytes[e]) { e += 1 }
            return simple(.parameter, s, e - s)
        }
        let tagEnd: Int  // offset of the closing `$` of the opening delimiter
        if c1 == UInt8(ascii: "$") {
            tagEnd = s + 1
        } else if SQLLexer.isIdentStart(c1) && s + 1 < count {
            var e = s + 2
            while e < count && SQLLexer.isDollarTagCont(bytes[e]) { e += 1 }
            guard at(e) == UInt8(ascii: "$") && e < count else { return simple(.other, s, 1) }
            tagEnd = e
        } else {
            return simple(.other, s, 1)
        }
        let delimiterLength = tagEnd - s + 1
        let bodyStart = tagEnd + 1
        var i = bodyStart
        while i + delimiterLength <= count {
            if bytes[i] == UInt8(ascii: "$") {
                var k = 1
                while k < delimiterLength && bytes[i + k] == bytes[s + k] { k += 1 }
                if k == delimiterLength {
                    position = i + delimiterLength
                    return SQLToken(kind: .dollarString, start: s, end: position, bodyStart: bodyStart, bodyEnd: i)
                }
            }
            i += 1
        }
        return unterminated(.dollarString, s)
    }

    private mutating func lexNumber(_ s: Int) -> SQLToken {
        var i = s
        if bytes[s] == UInt8(ascii: "0") {
            let p = at(s + 1) | 0x20
            let isValid: ((UInt8) -> Bool)?
            switch p {
            case UInt8(ascii: "x"): isValid = SQLLexer.isHexDigit
            case UInt8(ascii: "o"): isValid = { $0 >= 0x30 && $0 <= 0x37 }
            case UInt8(ascii: "b"): isValid = { $0 == 0x30 || $0 == 0x31 }
            default: isValid = nil
            }
            if let isValid {
                var j = s + 2
                var any = false
                while true {
                    if j < count && isValid(bytes[j]) { j += 1; any = true; continue }
                    if at(j) == UInt8(ascii: "_") && j + 1 < count && isValid(bytes[j + 1]) { j += 2; any = true; continue }
                    break
                }
                if any { return simple(.number, s, j - s) }
            }
        }
        i = scanDigits(from: i)
        if at(i) == UInt8(ascii: ".") && at(i + 1) != UInt8(ascii: ".") {
            i = scanDigits(from: i + 1)
        }
        if at(i) | 0x20 == UInt8(ascii: "e") {
            var j = i + 1
            if at(j) == UInt8(ascii: "+") || at(j) == UInt8(ascii: "-") { j += 1 }
            if j < count && SQLLexer.isDigit(bytes[j]) { i = scanDigits(from: j) }
        }
        return simple(.number, s, i - s)
    }

    /// Digits with single underscores between them; `i` may point at a non-digit (returns `i`).
    private func scanDigits(from start: Int) -> Int {
        var i = start
        while true {
            if i < count && SQLLexer.isDigit(bytes[i]) { i += 1; continue }
            if i > start && at(i) == UInt8(ascii: "_") && i + 1 < count && SQLLexer.isDigit(bytes[i + 1]) { i += 2; continue }
            return i
        }
    }

    private mutating func lexOperator(_ s: Int) -> SQLToken {
        var e = s
        while e < count && SQLLexer.isOpChar(bytes[e]) { e += 1 }
        // An operator stops before an embedded comment start.
        var j = s + 1
        while j < e {
            let a = bytes[j - 1], b = bytes[j]
            if (a == UInt8(ascii: "/") && b == UInt8(ascii: "*")) || (a == UInt8(ascii: "-") && b == UInt8(ascii: "-")) {
                e = j - 1
                break
            }
            j += 1
        }
        if e == s { e = s + 1 }  // cannot happen (trivia was skipped), but never return an empty token
        var n = e - s
        let last = bytes[s + n - 1]
        if n > 1 && (last == UInt8(ascii: "+") || last == UInt8(ascii: "-")) {
            var keeps = false
            for k in s..<(s + n - 1) {
                switch bytes[k] {
                case UInt8(ascii: "~"), UInt8(ascii: "!"), UInt8(ascii: "@"), UInt8(ascii: "#"),
                     UInt8(ascii: "^"), UInt8(ascii: "&"), UInt8(ascii: "|"), UInt8(ascii: "`"),
                     UInt8(ascii: "?"), UInt8(ascii: "%"):
                    keeps = true
                default: break
                }
            }
            if !keeps {
                repeat { n -= 1 } while n > 1 && (bytes[s + n - 1] == UInt8(ascii: "+") || bytes[s + n - 1] == UInt8(ascii: "-"))
            }
        }
        return simple(.operator, s, n)
    }

    // MARK: values

    /// The raw bytes of a token as written.
    func text(_ t: SQLToken) -> String {
        String(decoding: UnsafeBufferPointer(rebasing: bytes[t.start..<t.end]), as: UTF8.self)
    }

    /// True when `t` is the unquoted keyword `keyword` (which must be lower case ASCII).
    func isKeyword(_ t: SQLToken, _ keyword: StaticString) -> Bool {
        guard case .identifier = t.kind else { return false }
        let n = keyword.utf8CodeUnitCount
        guard t.end - t.start == n else { return false }
        let k = keyword.utf8Start
        for i in 0..<n where SQLLexer.asciiLower(bytes[t.start + i]) != k[i] { return false }
        return true
    }

    /// True when `t` is an operator token spelled exactly `op`.
    func isOperator(_ t: SQLToken, _ op: StaticString) -> Bool {
        guard case .operator = t.kind else { return false }
        let n = op.utf8CodeUnitCount
        guard t.end - t.start == n else { return false }
        let k = op.utf8Start
        for i in 0..<n where bytes[t.start + i] != k[i] { return false }
        return true
    }

    /// The name an identifier token denotes, as the server sees it: unquoted names folded to
    /// lower case, "" and U& escapes decoded, truncated to 63 bytes. Nil for other tokens or an
    /// invalid escape.
    func identifierValue(_ t: SQLToken) -> String? {
        var out: [UInt8]
        switch t.kind {
        case .identifier:
            out = []
            out.reserveCapacity(t.end - t.start)
            for i in t.start..<t.end { out.append(SQLLexer.asciiLower(bytes[i])) }
        case .quotedIdentifier:
            out = undoubled(t, quote: UInt8(ascii: "\""))
        case .unicodeIdentifier:
            guard let decoded = unicodeUnescape(undoubled(t, quote: UInt8(ascii: "\"")), escape: t.escape) else { return nil }
            out = decoded
        default:
            return nil
        }
        if out.count >= 64 {
            var n = 63
            while n > 0 && (out[n] & 0xC0) == 0x80 { n -= 1 }
            out.removeSubrange(n...)
        }
        return String(validating: out, as: UTF8.self)
    }

    /// The value of a string constant or dollar-quoted string; nil for other tokens, bit strings,
    /// invalid escapes, NUL bytes or invalid UTF-8 (all of which the server rejects too).
    func stringValue(_ t: SQLToken) -> String? {
        guard let out = decodedStringBytes(t) else { return nil }
        return String(validating: out, as: UTF8.self)
    }

    func decodedStringBytes(_ t: SQLToken) -> [UInt8]? {
        switch t.kind {
        case .dollarString:
            return Array(bytes[t.bodyStart..<t.bodyEnd])
        case .string(let style):
            switch style {
            case .standard:
                return stringBody(t, backslashEscapes: false)
            case .escape:
                return stringBody(t, backslashEscapes: true)
            case .unicode:
                guard let body = stringBody(t, backslashEscapes: false) else { return nil }
                return unicodeUnescape(body, escape: t.escape)
            case .bit, .hex:
                return nil
            }
        default:
            return nil
        }
    }

    private func undoubled(_ t: SQLToken, quote: UInt8) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(t.bodyEnd - t.bodyStart)
        var i = t.bodyStart
        while i < t.bodyEnd {
            let c = bytes[i]
            out.append(c)
            i += (c == quote && i + 1 < t.bodyEnd && bytes[i + 1] == quote) ? 2 : 1
        }
        return out
    }

    /// Body of a '...' constant: '' undoubled, continuations joined, and (for E'') escapes applied.
    private func stringBody(_ t: SQLToken, backslashEscapes: Bool) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(t.bodyEnd - t.bodyStart)
        var i = t.bodyStart
        let end = t.bodyEnd
        while i < end {
            let c = bytes[i]
            if c == UInt8(ascii: "'") {
                if i + 1 < end && bytes[i + 1] == UInt8(ascii: "'") {
                    out.append(c); i += 2; continue
                }
                guard let q = continuationQuote(after: i + 1), q < end else { return nil }
                i = q + 1
                continue
            }
            if c == UInt8(ascii: "\\") && backslashEscapes {
                guard i + 1 < end else { return nil }
                let d = bytes[i + 1]
                switch d {
                case UInt8(ascii: "b"): out.append(0x08); i += 2
                case UInt8(ascii: "f"): out.append(0x0C); i += 2
                case UInt8(ascii: "n"): out.append(0x0A); i += 2
                case UInt8(ascii: "r"): out.append(0x0D); i += 2
                case UInt8(ascii: "t"): out.append(0x09); i += 2
                case 0x30...0x37:
                    var v = 0, j = i + 1
                    while j < end && j < i + 4 && bytes[j] >= 0x30 && bytes[j] <= 0x37 { v = v * 8 + Int(bytes[j] - 0x30); j += 1 }
                    out.append(UInt8(truncatingIfNeeded: v)); i = j
                case UInt8(ascii: "x") where i + 2 < end && SQLLexer.isHexDigit(bytes[i + 2]):
                    var v = 0, j = i + 2
                    while j < end && j < i + 4 && SQLLexer.isHexDigit(bytes[j]) { v = v * 16 + SQLLexer.hexValue(bytes[j]); j += 1 }
                    out.append(UInt8(v)); i = j
                case UInt8(ascii: "u"), UInt8(ascii: "U"):
                    let digits = d == UInt8(ascii: "u") ? 4 : 8
                    guard let cp = hexNumber(at: i + 2, digits: digits, limit: end) else { return nil }
                    i += 2 + digits
                    var scalar = cp
                    if cp >= 0xD800 && cp <= 0xDBFF {
                        // a high surrogate must be followed by an escaped low surrogate
                        guard i + 1 < end, bytes[i] == UInt8(ascii: "\\"),
                              bytes[i + 1] == UInt8(ascii: "u") || bytes[i + 1] == UInt8(ascii: "U") else { return nil }
                        let d2 = bytes[i + 1] == UInt8(ascii: "u") ? 4 : 8
                        guard let low = hexNumber(at: i + 2, digits: d2, limit: end), low >= 0xDC00 && low <= 0xDFFF else { return nil }
                        i += 2 + d2
                        scalar = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard SQLLexer.appendUTF8(scalar, to: &out) else { return nil }
                default:
                    out.append(d); i += 2
                }
                continue
            }
            out.append(c)
            i += 1
        }
        if out.contains(0) { return nil }
        return out
    }

    /// U& escapes: `e` + 4 hex digits, `e+` + 6 hex digits, `ee` for the escape character itself.
    private func unicodeUnescape(_ input: [UInt8], escape e: UInt8) -> [UInt8]? {
        guard e != 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(input.count)
        var i = 0
        func hex(_ at: Int, _ n: Int) -> Int? {
            guard at + n <= input.count else { return nil }
            var v = 0
            for k in at..<(at + n) {
                guard SQLLexer.isHexDigit(input[k]) else { return nil }
                v = v * 16 + SQLLexer.hexValue(input[k])
            }
            return v
        }
        while i < input.count {
            let c = input[i]
            guard c == e else { out.append(c); i += 1; continue }
            guard i + 1 < input.count else { return nil }
            if input[i + 1] == e { out.append(e); i += 2; continue }
            var cp: Int
            if input[i + 1] == UInt8(ascii: "+") {
                guard let v = hex(i + 2, 6) else { return nil }
                cp = v; i += 8
            } else {
                guard let v = hex(i + 1, 4) else { return nil }
                cp = v; i += 5
            }
            if cp >= 0xD800 && cp <= 0xDBFF {
                guard i < input.count, input[i] == e else { return nil }
                let low: Int
                if i + 1 < input.count && input[i + 1] == UInt8(ascii: "+") {
                    guard let v = hex(i + 2, 6) else { return nil }
                    low = v; i += 8
                } else {
                    guard let v = hex(i + 1, 4) else { return nil }
                    low = v; i += 5
                }
                guard low >= 0xDC00 && low <= 0xDFFF else { return nil }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
            }
            guard SQLLexer.appendUTF8(cp, to: &out) else { return nil }
        }
        if out.contains(0) { return nil }
        return out
    }

    private func hexNumber(at p: Int, digits: Int, limit: Int) -> Int? {
        guard p + digits <= limit else { return nil }
        var v = 0
        for k in p..<(p + digits) {
            guard SQLLexer.isHexDigit(bytes[k]) else { return nil }
            v = v * 16 + SQLLexer.hexValue(bytes[k])
        }
        return v
    }

    @inline(__always) static func hexValue(_ c: UInt8) -> Int {
        switch c {
        case 0x30...0x39: return Int(c - 0x30)
        case 0x41...0x46: return Int(c - 0x41 + 10)
        default: return Int(c - 0x61 + 10)
        }
    }

    static func appendUTF8(_ cp: Int, to out: inout [UInt8]) -> Bool {
        guard cp > 0, cp <= 0x10FFFF, !(cp >= 0xD800 && cp <= 0xDFFF), let scalar = Unicode.Scalar(UInt32(cp)) else { return false }
        out.append(contentsOf: UTF8.encode(scalar)!)
        return true
    }
}

extension SQLLexer {
    /// Convenience for tests and diagnostics: all tokens of `sql`.
    static func tokens(_ sql: String, standardConformingStrings: Bool = true) -> [(token: SQLToken, text: String)] {
        var copy = sql
        return copy.withUTF8 { buffer in
            var lexer = SQLLexer(buffer, standardConformingStrings: standardConformingStrings)
            var result: [(SQLToken, String)] = []
            while let t = lexer.next() { result.append((t, lexer.text(t))) }
            return result
        }
    }

    /// Convenience for tests: runs `body` with a lexer over `sql`.
    static func with<R>(_ sql: String, standardConformingStrings: Bool = true, _ body: (inout SQLLexer) -> R) -> R {
        var copy = sql
        return copy.withUTF8 { buffer in
            var lexer = SQLLexer(buffer, standardConformingStrings: standardConformingStrings)
            return body(&lexer)
        }
    }
}

extension SQLLexer {
    /// Reads `name(.name)*` starting with `first` (a setting or function name, each part in any
    /// quoting), lower-cased; leaves the lexer after the name. Shared by both guards.
    mutating func readQualifiedName(_ first: SQLToken) -> String? {
        guard first.isIdentifierLike, var name = identifierValue(first) else { return nil }
        while true {
            var q = self
            guard let dot = q.next(), case .punctuation(UInt8(ascii: ".")) = dot.kind,
                  let part = q.next(), part.isIdentifierLike, let value = q.identifierValue(part) else { break }
            name += "."
            name += value
            self = q
        }
        return GuardPolicy.asciiLowercased(name)
    }
}
