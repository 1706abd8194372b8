module github.com/reversehttp/reverse_http/bench

go 1.26.8

require github.com/reversehttp/reverse_http v0.0.0

require golang.org/x/image v0.47.0

replace github.com/reversehttp/reverse_http => ../
