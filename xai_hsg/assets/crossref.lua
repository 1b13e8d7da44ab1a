-- Quarto-style cross-references for the pandoc fallback renderer.
-- Figures whose identifier starts with "fig-" are numbered in document order; "@fig-x" becomes "Figure N".
-- HTML: the caption gets a "Figure N:" prefix and references become links.
-- Typst: typst numbers figures itself, so references become native "@fig-x" references.
-- An unknown "@fig-" reference is an error, as in Quarto, not a silently broken link.

local numbers = {}

local function is_typst() return FORMAT:match("typst") ~= nil end

local function number_figures(blocks)
  local n = 0
  return blocks:walk({
    Figure = function(fig)
      if not fig.identifier:match("^fig%-") then return nil end
      n = n + 1
      numbers[fig.identifier] = n
      if not is_typst() then
        local prefix = pandoc.Inlines({pandoc.Strong({pandoc.Str("Figure"), pandoc.Space(), pandoc.Str(n .. ":")}), pandoc.Space()})
        local long = fig.caption.long
        if #long > 0 and long[1].content then
          long[1].content = prefix .. long[1].content
        else
          fig.caption.long = pandoc.Blocks({pandoc.Plain(prefix)})
        end
      end
      return fig
    end,
  })
end

local function resolve_references(blocks)
  return blocks:walk({
    Cite = function(cite)
      local ids = {}
      for _, c in ipairs(cite.citations) do
        if not c.id:match("^fig%-") then return nil end  -- a bibliography citation: leave it to citeproc
        table.insert(ids, c.id)
      end
      local out = pandoc.Inlines({})
      for i, id in ipairs(ids) do
        if numbers[id] == nil then
          error("unknown figure reference @" .. id .. " (no figure has the identifier #" .. id .. ")")
        end
        if i > 1 then out:insert(pandoc.Str(i == #ids and " and " or ", ")) end
        if is_typst() then
          out:insert(pandoc.RawInline("typst", "@" .. id))
        else
          out:insert(pandoc.Link({pandoc.Str("Figure"), pandoc.Space(), pandoc.Str(tostring(numbers[id]))}, "#" .. id))
        end
      end
      return out
    end,
  })
end

function Pandoc(doc)
  doc.blocks = number_figures(doc.blocks)
  doc.blocks = resolve_references(doc.blocks)
  return doc
end
