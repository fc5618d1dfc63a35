import XCTest
@testable import TenantProxy

final class SQLLexerTests: XCTestCase {
    private func kinds(_ sql: String, scs: Bool = true) -> [SQLToken.Kind] {
        SQLLexer.tokens(sql, standardConformingStrings: scs).map(\.token.kind)
    }

    private func texts(_ sql: String) -> [String] {
        SQLLexer.tokens(sql).map(\.text)
    }

    /// Value of the first token (identifier name or string value).
    private func value(_ sql: String, scs: Bool = true) -> String? {
        SQLLexer.with(sql, standardConformingStrings: scs) { lexer in
            guard let t = lexer.next() else { return nil }
            return lexer.identifierValue(t) ?? lexer.stringValue(t)
        }
    }

    func testWhitespaceAndComments() {
        XCTAssertEqual(texts("SELECT  1 -- comment ; SET x\n ;"), ["SELECT", "1", ";"])
        XCTAssertEqual(texts("a /* one /* two */ still */ b"), ["a", "b"])
        XCTAssertEqual(texts("a/**/b"), ["a", "b"])
        XCTAssertEqual(texts("a /* *** / /*/ */ */ b"), ["a", "b"])
        XCTAssertEqual(kinds("a /* /* */"), [.identifier, .unterminated(.blockComment)])
        XCTAssertEqual(texts("a\u{0B}\u{0C}\r\tb"), ["a", "b"])
        XCTAssertEqual(texts("x --c\rSET"), ["x", "SET"])
    }

    func testIdentifiers() {
        XCTAssertEqual(value("SeLeCt"), "select")
        XCTAssertEqual(value("\"MiXed\"\"Q\""), "MiXed\"Q")
        XCTAssertEqual(texts("x$$ ; y"), ["x$$", ";", "y"], "$ continues an identifier")
        XCTAssertEqual(texts("_a1$b"), ["_a1$b"])
        XCTAssertEqual(value("ÄbC"), "Äbc", "only ASCII letters fold")
        XCTAssertEqual(value(String(repeating: "a", count: 70)), String(repeating: "a", count: 63))
        XCTAssertEqual(value(String(repeating: "a", count: 62) + "éz")?.utf8.count, 62, "truncation keeps whole characters")
        XCTAssertEqual(kinds("\"abc"), [.unterminated(.quotedIdentifier)])
    }

    func testUnicodeIdentifiers() {
        XCTAssertEqual(value("U&\"nile.tenant\\005fid\""), "nile.tenant_id")
        XCTAssertEqual(value("u&\"d\\0061t\\+000061\""), "data")
        XCTAssertEqual(value("U&\"nile.tenant!005fid\" UESCAPE '!'"), "nile.tenant_id")
        XCTAssertEqual(value("U&\"a!!b\" /* c */ uescape /* d */ '!'"), "a!b")
        XCTAssertEqual(texts("U&\"x\" UESCAPE '!' = 1"), ["U&\"x\" UESCAPE '!'", "=", "1"])
        XCTAssertNil(value("U&\"bad\\00zz\""))
        XCTAssertNil(value("U&\"x\" UESCAPE '+'"), "+ is not a valid escape character")
        XCTAssertEqual(value("U&\"\\D83D\\DE00\""), "\u{1F600}", "surrogate pair")
    }

    func testStrings() {
        XCTAssertEqual(value("'it''s'"), "it's")
        XCTAssertEqual(value("'a\\b'"), "a\\b", "backslash literal in standard strings")
        XCTAssertEqual(value("E'a\\'b'"), "a'b")
        XCTAssertEqual(value("e'\\\\'"), "\\")
        XCTAssertEqual(value("E'\\n\\t\\x41\\101\\u0042\\U00000043\\q'"), "\n\tAABCq")
        XCTAssertEqual(value("E'\\x4'"), "\u{04}")
        XCTAssertNil(value("E'\\u12'"), "short \\u escape is an error")
        XCTAssertNil(value("E'\\0'"), "NUL is rejected")
        XCTAssertEqual(value("U&'d\\0061t\\+000061'"), "data")
        XCTAssertEqual(value("U&'d!0061ta' UESCAPE '!'"), "data")
        XCTAssertEqual(value("N'abc'"), "abc")
        XCTAssertEqual(kinds("B'0101' X'1F'"), [.string(.bit), .string(.hex)])
        XCTAssertEqual(texts("B'01''1'"), ["B'01'", "'1'"], "'' does not escape in bit strings")
        XCTAssertEqual(kinds("'abc"), [.unterminated(.string)])
        XCTAssertEqual(kinds("E'abc\\'"), [.unterminated(.string)])
        XCTAssertEqual(kinds("xe'a'"), [.identifier, .string(.standard)])
    }

    func testStringContinuation() {
        XCTAssertEqual(value("'ab'\n'cd'"), "abcd")
        XCTAssertEqual(value("'ab' -- it's\n  'cd'"), "abcd")
        XCTAssertEqual(texts("'ab' 'cd'").count, 2, "no newline: two constants")
        XCTAssertEqual(texts("'ab' /* c */\n'cd'").count, 2, "block comments do not join constants")
        XCTAssertEqual(value("E'a'\n'\\'b'"), "a'b", "continuation keeps E mode")
        XCTAssertEqual(texts("'a'\n'\\'; SET x = 1; -- '"), ["'a'\n'\\'", ";", "SET", "x", "=", "1", ";"],
                       "a plain continuation does not take backslash escapes")
    }

    func testStandardConformingStringsOff() {
        XCTAssertEqual(kinds("'a\\'b'", scs: false), [.string(.escape)])
        XCTAssertEqual(value("'a\\'b'", scs: false), "a'b")
        XCTAssertEqual(kinds("'a\\'c'"), [.string(.standard), .identifier, .unterminated(.string)])
        XCTAssertEqual(kinds("'a\\'b'"), [.string(.standard), .unterminated(.string)], "b' opens a bit string")
        SQLLexer.with("SELECT 'a\\b'") { lexer in
            while lexer.next() != nil {}
            XCTAssertTrue(lexer.sawBackslashInStandardString)
        }
        SQLLexer.with("SELECT E'a\\b', 'c'") { lexer in
            while lexer.next() != nil {}
            XCTAssertFalse(lexer.sawBackslashInStandardString)
        }
    }

    func testDollarQuotes() {
        XCTAssertEqual(value("$$ it's ; $$"), " it's ; ")
        XCTAssertEqual(value("$a$ $b$ $a$"), " $b$ ")
        XCTAssertEqual(value("$a$x$ab$y$a$"), "x$ab$y")
        XCTAssertEqual(value("$Tag$ $tag$ $Tag$"), " $tag$ ", "tags are case sensitive")
        XCTAssertEqual(kinds("$1"), [.parameter])
        XCTAssertEqual(kinds("$1$$x$$"), [.parameter, .dollarString])
        XCTAssertEqual(kinds("$_1$x$_1$"), [.dollarString])
        XCTAssertEqual(kinds("$a"), [.other, .identifier])
        XCTAssertEqual(kinds("$a$ never closed"), [.unterminated(.dollarString)])
        XCTAssertEqual(kinds("1$$x$$"), [.number, .dollarString])
    }

    func testNumbersAndOperators() {
        XCTAssertEqual(texts("1 1.5 .5 1e10 1.e 1_000 0x1F 0o17 0b101 1..2"),
                       ["1", "1.5", ".5", "1e10", "1.", "e", "1_000", "0x1F", "0o17", "0b101", "1", "..", "2"])
        XCTAssertEqual(texts("0x$$"), ["0", "x$$"])
        XCTAssertEqual(texts("a=-1"), ["a", "=", "-", "1"])
        XCTAssertEqual(texts("a @- 1"), ["a", "@-", "1"])
        XCTAssertEqual(texts("a=--c\n1"), ["a", "=", "1"])
        XCTAssertEqual(texts("a+/*c*/1"), ["a", "+", "1"])
        XCTAssertEqual(texts("x::int <> y || z"), ["x", "::", "int", "<>", "y", "||", "z"])
        XCTAssertEqual(kinds("( ) , ; . [ ] :"), [.punctuation(40), .punctuation(41), .punctuation(44), .punctuation(59),
                                                  .punctuation(46), .punctuation(91), .punctuation(93), .punctuation(58)])
    }

    func testNeverCrashesOnTruncatedInput() {
        let inputs = ["'", "E'", "E'\\", "U&'", "U&\"", "U&\"x\" UESCAPE", "U&\"x\" UESCAPE '", "$", "$$", "$a", "$a$",
                      "/*", "/* /*", "--", "\"", "B'", "X'", "0x", "1e", "1e+", ".", "'a'\n", "'a'\n--", "\u{0}"]
        for input in inputs {
            for n in 0...input.utf8.count {
                let prefix = String(decoding: Array(input.utf8.prefix(n)), as: UTF8.self)
                let all = SQLLexer.tokens(prefix)
                XCTAssertLessThanOrEqual(all.count, prefix.utf8.count + 1)
            }
        }
    }
}
